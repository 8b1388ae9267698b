"""One module per recipe ``kind``; ``radiosharp.train`` dispatches on it."""
