"""The `quantum-server` program around `server.QuantumServer`: its configuration
(`config`), the command line (`cli`) and what it asks of the operating system (`system`)."""
