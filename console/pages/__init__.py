"""One module per page of the console; each has ``setup(router)`` adding its routes."""
