"""``python -m deliberate.server > docs/openapi.json``: the app's OpenAPI schema."""

from deliberate.server.app import openapi_document

print(openapi_document(), end="")
