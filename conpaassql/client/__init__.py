"""
The command-line client of the manager, C{conpaassql-client}.

It speaks to the manager's public JSON-RPC API only, through
L{conpaassql.rpc.client.RPCClient}; see L{conpaassql.client.cli}.
"""
