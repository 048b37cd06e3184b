"""temporal package."""
