"""Topics written by an older StreamFlow, and the pipeline that wrote them."""
