"""One module per `firefly` subcommand; each exposes `register(subparsers)`."""
