from twisted.application.service import ServiceMaker

conpaassqlManager = ServiceMaker(
    "conpaassql manager",
    "conpaassql.manager.tap",
    "Provisions database nodes on a cloud, tracks them, and answers JSON-RPC.",
    "conpaassql-manager",
)
