"""tether: a durable, bounded, observed runtime for LLM agents."""
