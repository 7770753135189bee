pytest_plugins = [
    "tests.plugins.hub",
]
