"""MCP (Model Context Protocol) support: a Streamable HTTP client and the manager that
keeps every configured tool server connected. The `mcp` filter (filters/mcp.py) uses them
to run the model's tool calls."""
