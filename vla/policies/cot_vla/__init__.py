"""CoT-VLA policy (config in ``vla.configs``; modeling imported lazily by ``CotVlaConfig.build``)."""
