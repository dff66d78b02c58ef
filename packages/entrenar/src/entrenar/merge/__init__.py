"""Model merging (`entrenar merge`): mergekit's YAML, methods as small pure functions, streamed tensor by tensor."""
