"""What runs beside the UDP server in the quantum-server process, and its operator tools.

- `services`: the --grpc/--metrics flags and `NetworkServices` (the API and metrics servers)
- `transport`: the transport counters the metrics read at scrape time (`transport_totals`)
- `metrics`: the Prometheus collectors; `http`: /metrics, /healthz, /readyz
- `api_token`: the API's bearer token file beside the server key
- `admin`: `quantum-server sessions ...` and `quantum-server api-token`
"""
