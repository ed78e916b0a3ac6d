"""The Omnisend side: HTTP client, rate budget and the sink that drives them."""
