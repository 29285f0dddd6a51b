"""The `quantum-server` program around `server.QuantumServer`, and its operator tools.

- `cli`: the command line (`serve`, `run_app`, `keygen`, `issue-ticket`); `config`: `ServerConfig`
- `system`: what the process asks of the OS (socket buffers, `malloc_trim`)
- `services`: the --grpc/--metrics flags and `NetworkServices` (the API and metrics servers)
- `transport`: the transport counters the metrics read at scrape time (`transport_totals`)
- `metrics`: the Prometheus collectors; `http`: /metrics, /healthz, /readyz
- `api_token`: the API's bearer token file beside the server key
- `admin`: `quantum-server sessions ...` and `quantum-server api-token`
"""
