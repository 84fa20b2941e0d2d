"""`ultraplane mcp`: an MCP troubleshooting server for a cluster, on the official `mcp` SDK.

Named `ultraplane.mcp`; the SDK is the top-level `mcp` package, so modules here import it absolutely.
"""
