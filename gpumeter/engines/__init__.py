"""Inference servers: scraping, dialects, discovery and token counters."""
