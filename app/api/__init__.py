"""Front doors: adapters that parse a request, call one service, and map errors once."""
