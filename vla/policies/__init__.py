"""Policy implementations (one folder each)."""
