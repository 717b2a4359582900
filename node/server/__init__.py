"""The custody node process: its configuration, runtime and HTTP API."""
