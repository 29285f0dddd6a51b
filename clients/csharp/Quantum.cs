// Quantum: a C# binding over libquantum (clients/c), for Unity and any .NET Standard 2.1 host.
//
//   using (var client = new Quantum.QuantumClient())
//   {
//       client.Connect("game.example.com", 9090, "SHA256:...", "alice", ticket);
//       client.WaitConnected(5000);
//       client.Send(0, Quantum.Delivery.ReliableOrdered, Encoding.UTF8.GetBytes("hello"));
//       while (client.Service(0, out var ev))      // every frame
//           if (ev.Type == Quantum.EventType.Message) Handle(ev.Channel, ev.Data);
//   }
//
// The native library is loaded as "quantum" (libquantum.so, libquantum.dylib, quantum.dll).
// Sending passes the caller's array to the library pinned, without a copy; receiving
// allocates exactly one array per message (the message itself): the event structure is
// blittable, so nothing else is marshalled. The API surface is .NET Standard 2.1's (no Span,
// so that Mono's mcs builds it too). Not thread-safe: use one client from one thread.
using System;
using System.Runtime.InteropServices;
using System.Text;

namespace Quantum
{
    /// <summary>How a message travels (the protocol's delivery modes).</summary>
    public enum Delivery : byte
    {
        /// <summary>Exactly once, in order within its channel. Up to 1 MiB.</summary>
        ReliableOrdered = 0,
        /// <summary>Exactly once, as soon as complete. Up to 1 MiB.</summary>
        ReliableUnordered = 1,
        /// <summary>At most once; at most QuantumClient.MaxUnreliableSize (1024) bytes.</summary>
        Unreliable = 2,
        /// <summary>At most once, never older after newer in its channel; at most 1024 bytes.</summary>
        UnreliableSequenced = 3,
    }

    public enum EventType
    {
        None = 0,
        /// <summary>The server accepted us: SessionId, SessionToken, RemainingMs, Resumed.</summary>
        Connected = 1,
        /// <summary>A whole message: Data, Channel, Mode.</summary>
        Message = 2,
        /// <summary>A keepalive was answered: KeepaliveId, RemainingMs, Rtt.</summary>
        Keepalive = 3,
        /// <summary>The connection is over: Code, Reason, ByPeer. Always the last event.</summary>
        Disconnected = 4,
        /// <summary>The connection was lost and re-established by itself (Resumed: same session).</summary>
        Reconnected = 5,
        /// <summary>A heartbeat got no answer in time: KeepaliveId.</summary>
        KeepaliveTimeout = 6,
    }

    /// <summary>Reason codes of a disconnection (the protocol's close codes).</summary>
    public enum CloseCode : ushort
    {
        Normal = 0, IdleTimeout = 1, ProtocolViolation = 2, SessionEnded = 3, ServerShutdown = 4,
        HandshakeTimeout = 5, InternalError = 6, KeysExhausted = 7, BadTicket = 16,
        ExpiredTicket = 17, UnknownUser = 18, ServerFull = 19, RateLimited = 20,
        VersionNotSupported = 21, BadResume = 22, BadServerKey = 23, BadRequest = 24,
        StoreUnavailable = 25, CipherNotSupported = 30,
    }

    /// <summary>A failed call; Code is the library's quantum_error (negative).</summary>
    public sealed class QuantumException : Exception
    {
        public readonly int Code;

        public QuantumException(int code, string what)
            : base(what + ": " + Native.ErrorString(code) + " (" + code + ")")
        {
            Code = code;
        }
    }

    /// <summary>One event. Data and strings are managed copies, safe to keep.</summary>
    public struct QuantumEvent
    {
        public EventType Type;
        public byte Channel;
        public Delivery Mode;
        public byte[] Data;
        public uint KeepaliveId;
        /// <summary>The session's remaining lifetime in ms (uint.MaxValue: none / never).</summary>
        public uint RemainingMs;
        /// <summary>Round trip of a keepalive, seconds (negative: unknown).</summary>
        public double Rtt;
        public CloseCode Code;
        public string Reason;
        public bool ByPeer;
        public bool Resumed;
        public Guid SessionId;
        public string SessionToken;
    }

    /// <summary>The library's configuration (quantum_config): defaults from the library.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct Config
    {
        public double KeepaliveInterval;
        public double IdleTimeout;
        public double HandshakeTimeout;
        public int HandshakeTries;
        public int FecK, FecM;
        public int Window;
        public double MaxAckDelay;
        public double CloseTimeout;
        public ulong PacketsPerKey;
        public UIntPtr MaxReceiveBuffer;
        public int MaxDatagram;
        public int AutoReconnect;
        public double ReconnectInitialDelay, ReconnectMaxDelay;
        public int ReconnectMaxAttempts;
        public int ResumeFallback;
        // Quantum 1.0
        public ulong KeyUpdatePackets;
        /// <summary>quantum_cipher_preference: 0 auto (AES-256-GCM first where the CPU has
        /// it), 1 ChaCha20-Poly1305 first, 2 ChaCha20-Poly1305 only, 3 AES-256-GCM only.</summary>
        public int CipherPreference;

        public static Config Default()
        {
            Config c;
            Native.quantum_config_default(out c);
            return c;
        }
    }

    /// <summary>Counters of the current connection (quantum_stats).</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct Stats
    {
        public ulong PacketsSent, PacketsReceived, BytesSent, BytesReceived;
        public ulong MessagesSent, MessagesReceived;
        public ulong FastRetransmits, TimeoutRetransmits, PacketsLost, FecRecovered;
        public ulong PathChallengesAnswered;
        public ulong Dropped;
        public double Srtt, MinRtt;
        public ulong Cwnd;
        public double PacingRate;
        public uint Reconnects;
        public uint MaxDatagram;
        public uint Cipher;
        public ulong KeyUpdates;
        public ulong SendGeneration, ReceiveGeneration;
    }

    /// <summary>A connection to a Quantum server (the library's socket layer).</summary>
    public sealed class QuantumClient : IDisposable
    {
        /// <summary>Largest unreliable message (QUANTUM_MAX_UNRELIABLE).</summary>
        public const int MaxUnreliableSize = 1024;

        private IntPtr handle;

        public QuantumClient() : this(Config.Default()) { }

        public QuantumClient(Config config)
        {
            Check(Native.quantum_client_create(out handle, ref config), "create");
        }

        ~QuantumClient() { Free(); }

        public void Dispose()
        {
            Free();
            GC.SuppressFinalize(this);
        }

        private void Free()
        {
            if (handle != IntPtr.Zero)
            {
                Native.quantum_client_destroy(handle);
                handle = IntPtr.Zero;
            }
        }

        private IntPtr Handle
        {
            get
            {
                if (handle == IntPtr.Zero) throw new ObjectDisposedException("QuantumClient");
                return handle;
            }
        }

        private static void Check(int code, string what)
        {
            if (code < 0) throw new QuantumException(code, what);
        }

        /// <summary>A metadata entry sent with the next Connect (for example "room").</summary>
        public void SetMetadata(string key, string value)
        {
            Check(Native.quantum_client_set_metadata(Handle, Utf8(key), Utf8(value)), "metadata");
        }

        /// <summary>Resume a session (from an earlier Connected event) on the next Connect.</summary>
        public void SetResume(Guid sessionId, string token, bool fallback)
        {
            Check(Native.quantum_client_set_resume(Handle, UuidBytes(sessionId), Utf8(token),
                                                   fallback ? 1 : 0), "resume");
        }

        /// <summary>Start connecting; then Service() until Connected or Disconnected.
        /// serverKey: "SHA256:..." fingerprint or base64 public key (null trusts any).</summary>
        public void Connect(string host, int port, string serverKey, string userId,
                            string ticket = null)
        {
            if (port < 1 || port > 65535) throw new ArgumentOutOfRangeException("port");
            Check(Native.quantum_client_connect(Handle, Utf8(host), (ushort)port, Utf8(serverKey),
                                                Utf8(userId), Utf8(ticket)), "connect");
        }

        /// <summary>Service until connected; throws QuantumException when refused or
        /// unreachable (the Disconnected event's reason is in the message).</summary>
        public QuantumEvent WaitConnected(int timeoutMs)
        {
            NativeEvent raw;
            int r = Native.quantum_client_wait_connected(Handle, timeoutMs, out raw);
            QuantumEvent ev = Convert(ref raw);
            if (r == Native.E_DISCONNECTED)
                throw new QuantumException(r, "connect refused (" + ev.Code + "): " + ev.Reason);
            Check(r, "connect");
            return ev;
        }

        /// <summary>Queue a message; count bytes from data[offset]. The bytes are copied by
        /// the library before this returns.</summary>
        public unsafe void Send(byte channel, Delivery mode, byte[] data, int offset, int count)
        {
            if (data == null) throw new ArgumentNullException("data");
            if (offset < 0 || count < 0 || offset > data.Length - count)
                throw new ArgumentOutOfRangeException("offset");
            fixed (byte* p = data)
            {
                Check(Native.quantum_client_send(Handle, channel, (int)mode,
                                                 (IntPtr)(p + offset), (UIntPtr)count), "send");
            }
        }

        public void Send(byte channel, Delivery mode, byte[] data)
        {
            Send(channel, mode, data, 0, data == null ? 0 : data.Length);
        }

        /// <summary>Send a keepalive now (re-sent until answered or timeoutMs); the answer is
        /// a Keepalive event with the returned id.</summary>
        public uint Heartbeat(int timeoutMs)
        {
            uint id;
            Check(Native.quantum_client_heartbeat(Handle, timeoutMs, out id), "heartbeat");
            return id;
        }

        /// <summary>Run I/O and timers for at most timeoutMs (0: do not wait); true with an
        /// event, false if none came. Call it every frame.</summary>
        public bool Service(int timeoutMs, out QuantumEvent ev)
        {
            NativeEvent raw;
            int r = Native.quantum_client_service(Handle, timeoutMs, out raw);
            Check(r, "service");
            ev = r == 1 ? Convert(ref raw) : default(QuantumEvent);
            return r == 1;
        }

        /// <summary>Graceful close: queued messages first; Service() until Disconnected.</summary>
        public void Close(string reason = "client closed")
        {
            Check(Native.quantum_client_close(Handle, Utf8(reason)), "close");
        }

        /// <summary>Move to a new local port (as a network change would).</summary>
        public void Rebind()
        {
            Check(Native.quantum_client_rebind(Handle), "rebind");
        }

        public Stats GetStats()
        {
            Stats s;
            Check(Native.quantum_client_stats(Handle, out s), "stats");
            return s;
        }

        public int LocalPort
        {
            get { return Native.quantum_client_local_port(Handle); }
        }

        private static unsafe QuantumEvent Convert(ref NativeEvent raw)
        {
            QuantumEvent ev = default(QuantumEvent);
            ev.Type = (EventType)raw.type;
            ev.Channel = raw.channel;
            ev.Mode = (Delivery)raw.mode;
            ev.KeepaliveId = raw.keepalive_id;
            ev.RemainingMs = raw.remaining_ms;
            ev.Rtt = raw.rtt;
            ev.Code = (CloseCode)raw.code;
            ev.ByPeer = raw.by_peer != 0;
            ev.Resumed = raw.resumed != 0;
            switch (ev.Type)
            {
                case EventType.Message:
                    int n = checked((int)raw.length);
                    ev.Data = new byte[n]; // the one allocation a message costs
                    if (n > 0) Marshal.Copy(raw.data, ev.Data, 0, n);
                    break;
                case EventType.Disconnected:
                    ev.Reason = FromUtf8(raw.reason, checked((int)raw.reason_length));
                    break;
                case EventType.Connected:
                case EventType.Reconnected:
                    fixed (byte* id = raw.session_id) ev.SessionId = UuidFromBytes(id);
                    fixed (byte* t = raw.session_token)
                    {
                        int len = 0;
                        while (len < 68 && t[len] != 0) len++;
                        ev.SessionToken = FromUtf8((IntPtr)t, len);
                    }
                    break;
            }
            return ev;
        }

        private static byte[] Utf8(string s)
        {
            if (s == null) return null;
            byte[] b = new byte[Encoding.UTF8.GetByteCount(s) + 1];
            Encoding.UTF8.GetBytes(s, 0, s.Length, b, 0);
            return b; // NUL-terminated
        }

        private static string FromUtf8(IntPtr p, int len)
        {
            if (p == IntPtr.Zero || len <= 0) return "";
            byte[] b = new byte[len];
            Marshal.Copy(p, b, 0, len);
            return Encoding.UTF8.GetString(b);
        }

        // A session id is a UUID's 16 bytes in network order; System.Guid keeps its first
        // three fields little-endian, hence the swaps.
        private static unsafe Guid UuidFromBytes(byte* b)
        {
            byte[] g = new byte[16];
            for (int i = 0; i < 16; i++) g[i] = b[i];
            Array.Reverse(g, 0, 4);
            Array.Reverse(g, 4, 2);
            Array.Reverse(g, 6, 2);
            return new Guid(g);
        }

        private static byte[] UuidBytes(Guid id)
        {
            byte[] b = id.ToByteArray();
            Array.Reverse(b, 0, 4);
            Array.Reverse(b, 4, 2);
            Array.Reverse(b, 6, 2);
            return b;
        }
    }

    /// <summary>quantum_event, field for field (blittable: marshalled without allocating).</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal unsafe struct NativeEvent
    {
        public int type;
        public byte channel, mode, resumed, by_peer;
        public uint keepalive_id, remaining_ms;
        public ushort code, reserved;
        public double rtt;
        public IntPtr data;
        public UIntPtr length;
        public IntPtr reason;
        public UIntPtr reason_length;
        public fixed byte session_id[16];
        public fixed byte session_token[68];
    }

    internal static class Native
    {
        private const string Lib = "quantum";
        internal const int E_DISCONNECTED = -14;

        internal static string ErrorString(int code)
        {
            IntPtr p = quantum_error_string(code);
            int len = 0;
            while (Marshal.ReadByte(p, len) != 0) len++;
            byte[] b = new byte[len];
            Marshal.Copy(p, b, 0, len);
            return Encoding.UTF8.GetString(b);
        }

        [DllImport(Lib)] internal static extern IntPtr quantum_error_string(int error);
        [DllImport(Lib)] internal static extern void quantum_config_default(out Config config);
        [DllImport(Lib)] internal static extern int quantum_client_create(out IntPtr client, ref Config config);
        [DllImport(Lib)] internal static extern void quantum_client_destroy(IntPtr client);
        [DllImport(Lib)] internal static extern int quantum_client_set_metadata(IntPtr client, byte[] key, byte[] value);
        [DllImport(Lib)] internal static extern int quantum_client_set_resume(IntPtr client, byte[] sessionId, byte[] token, int fallback);
        [DllImport(Lib)] internal static extern int quantum_client_connect(IntPtr client, byte[] host, ushort port, byte[] serverKey, byte[] userId, byte[] ticket);
        [DllImport(Lib)] internal static extern int quantum_client_wait_connected(IntPtr client, int timeoutMs, out NativeEvent ev);
        [DllImport(Lib)] internal static extern int quantum_client_send(IntPtr client, byte channel, int mode, IntPtr data, UIntPtr length);
        [DllImport(Lib)] internal static extern int quantum_client_heartbeat(IntPtr client, int timeoutMs, out uint keepaliveId);
        [DllImport(Lib)] internal static extern int quantum_client_service(IntPtr client, int timeoutMs, out NativeEvent ev);
        [DllImport(Lib)] internal static extern int quantum_client_close(IntPtr client, byte[] reason);
        [DllImport(Lib)] internal static extern int quantum_client_rebind(IntPtr client);
        [DllImport(Lib)] internal static extern int quantum_client_stats(IntPtr client, out Stats stats);
        [DllImport(Lib)] internal static extern ushort quantum_client_local_port(IntPtr client);
    }
}
