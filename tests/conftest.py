pytest_plugins = [
    "tests.plugins.hub",
    "tests.plugins.argilla_server",
    "tests.plugins.llama",
]
