"""Human review: an adapter interface, the Argilla implementation, resolution + agreement, the local server launcher."""
