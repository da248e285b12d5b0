"""The vLLM OpenAI-compatible API simulator, the development and CI stand-in for ``vllm serve``."""
