"""The HTTP API of svg2 (FastAPI). Never imports torch: it validates requests against the model
registry, stores jobs in Redis and serves their results; GPU workers do the generation."""
