"""Small real applications built on actorflow (loaded by ``actorflow serve examples.bank ...``)."""
