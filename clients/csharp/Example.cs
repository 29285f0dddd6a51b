// QuantumEcho: the C# binding's console example, run against examples/echo_server.py.
//
//   mono QuantumEcho.exe HOST PORT SERVER_KEY USER
//
// Connects, echoes a message on every delivery mode on two channels and a 1 MiB one, sends a
// heartbeat, closes, and exits 0 only if everything came back intact.
using System;
using System.Diagnostics;
using Quantum;

public static class QuantumEcho
{
    private static int Fail(string what)
    {
        Console.Error.WriteLine("QuantumEcho: " + what);
        return 1;
    }

    // Wait for the next message (other events are unexpected here).
    private static bool NextMessage(QuantumClient client, int timeoutMs, out QuantumEvent ev)
    {
        var clock = Stopwatch.StartNew();
        while (clock.ElapsedMilliseconds < timeoutMs)
        {
            if (client.Service(20, out ev))
            {
                if (ev.Type == EventType.Message) return true;
                if (ev.Type == EventType.Disconnected) return false;
            }
        }
        ev = default(QuantumEvent);
        return false;
    }

    private static bool Same(byte[] a, byte[] b)
    {
        if (a.Length != b.Length) return false;
        for (int i = 0; i < a.Length; i++) if (a[i] != b[i]) return false;
        return true;
    }

    public static int Main(string[] args)
    {
        if (args.Length != 4)
        {
            Console.Error.WriteLine("usage: QuantumEcho HOST PORT SERVER_KEY USER");
            return 2;
        }
        int port;
        if (!int.TryParse(args[1], out port) || port < 1 || port > 65535)
        {
            Console.Error.WriteLine("QuantumEcho: PORT must be 1..65535");
            return 2;
        }
        using (var client = new QuantumClient())
        {
            client.SetMetadata("engine", "mono");
            client.Connect(args[0], port, args[2], args[3]);
            QuantumEvent connected;
            try
            {
                connected = client.WaitConnected(10000);
            }
            catch (QuantumException e)
            {
                return Fail(e.Message);
            }
            Console.WriteLine("connected session " + connected.SessionId);
            var random = new Random(7);
            int echoed = 0;
            foreach (byte channel in new byte[] { 0, 42 })
            {
                foreach (Delivery mode in Enum.GetValues(typeof(Delivery)))
                {
                    bool unreliable = mode >= Delivery.Unreliable;
                    var data = new byte[unreliable ? 700 : 3000];
                    random.NextBytes(data);
                    bool ok = false;
                    for (int attempt = 0; attempt < (unreliable ? 5 : 1) && !ok; attempt++)
                    {
                        client.Send(channel, mode, data);
                        QuantumEvent ev;
                        if (!NextMessage(client, unreliable ? 1000 : 10000, out ev)) continue;
                        if (ev.Channel != channel || ev.Mode != mode || !Same(ev.Data, data))
                            return Fail("echo differs on channel " + channel + " " + mode);
                        ok = true;
                    }
                    if (!ok) return Fail("no echo on channel " + channel + " " + mode);
                    echoed++;
                }
            }
            Console.WriteLine("echo ok: " + echoed + " messages");
            var big = new byte[1 << 20];
            random.NextBytes(big);
            client.Send(3, Delivery.ReliableOrdered, big);
            QuantumEvent back;
            if (!NextMessage(client, 30000, out back) || !Same(back.Data, big))
                return Fail("the 1 MiB message did not come back intact");
            Console.WriteLine("big ok: " + back.Data.Length + " bytes");
            uint id = client.Heartbeat(5000);
            var clock = Stopwatch.StartNew();
            bool answered = false;
            while (!answered && clock.ElapsedMilliseconds < 6000)
            {
                QuantumEvent ev;
                if (client.Service(20, out ev) && ev.Type == EventType.Keepalive && ev.KeepaliveId == id)
                {
                    Console.WriteLine("heartbeat ok: remaining_ms=" + ev.RemainingMs);
                    answered = true;
                }
            }
            if (!answered) return Fail("no heartbeat answer");
            client.Close("client closed");
            clock.Restart();
            while (clock.ElapsedMilliseconds < 10000)
            {
                QuantumEvent ev;
                if (client.Service(20, out ev) && ev.Type == EventType.Disconnected)
                {
                    if (ev.Code != CloseCode.Normal || ev.ByPeer) return Fail("closed: " + ev.Reason);
                    Console.WriteLine("close ok");
                    return 0;
                }
            }
            return Fail("no Disconnected event after Close");
        }
    }
}
