"""From a pushed commit to a slug: the buildpack, the release phase, the runtime environment."""
