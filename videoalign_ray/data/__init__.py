"""Preference data: schema, table IO with rejects, video decoding and transforms, the latent cache."""
