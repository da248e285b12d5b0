"""The node agent: the paid gate in front of one vLLM OpenAI-compatible server."""
