"""One module per runtime (a runner and its build step), the runtime table (``specs``), and what the runners
share: shapes and the layer lists the guard reads."""
