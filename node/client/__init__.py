"""Principal-side tools: client profiles and (later) the API client."""
