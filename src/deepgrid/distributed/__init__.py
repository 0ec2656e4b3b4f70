"""The scale-out engine: a master that hands out jobs, worker actors that train, failure handling."""
