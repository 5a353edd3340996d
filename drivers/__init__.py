# Typed device proxies, one flat module per kind. Client side: must import on Windows.
