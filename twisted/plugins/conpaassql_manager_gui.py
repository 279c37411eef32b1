from twisted.application.service import ServiceMaker

conpaassqlManagerGUI = ServiceMaker(
    "conpaassql manager web front-end",
    "conpaassql.gui.tap",
    "The web front-end of a conpaassql manager (sign in with its API token).",
    "conpaassql-manager-gui",
)
