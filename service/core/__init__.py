"""What every way in shares: settings, errors, registry, runtime, tasks, the catalog and preprocessing."""
