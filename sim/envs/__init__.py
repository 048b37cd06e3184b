"""Suite modules: each provides ``build_suite(name)`` and ``make_env(suite_name, task, render, **kw)``."""
