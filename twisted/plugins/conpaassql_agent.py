from twisted.application.service import ServiceMaker

conpaassqlAgent = ServiceMaker(
    "conpaassql agent",
    "conpaassql.agent.tap",
    "Controls one node's MySQL/MariaDB server and answers JSON-RPC.",
    "conpaassql-agent",
)
