"""Drives a live pixee-pim through the client openapi-python-client generated from
static/openapi.json (tests/api/clients.rs generates it and runs this). Every answer is read
through the generated models, as an integrator's code would; one JSON line of findings is
printed for the Rust side to check.

Environment: PIXEE_BASE, PIXEE_EMAIL, PIXEE_PASSWORD; the generated package on PYTHONPATH.
"""
import json, os, sys

from pixee_pim_api_client import AuthenticatedClient, Client
from pixee_pim_api_client.api.api_keys import create_api_key
from pixee_pim_api_client.api.auth import login
from pixee_pim_api_client.api.products import create_product, get_product, list_products
from pixee_pim_api_client.models import (ApiKeyCreate, ApiKeyWithSecret, LoginRequest, Product,
                                         ProductInput, ProductList, TokenResponse,
                                         ValidationProblem)

base = os.environ["PIXEE_BASE"]


def expect(value, kind, what):
    if not isinstance(value, kind):
        sys.exit(f"{what}: expected {kind.__name__}, got {value!r}")
    return value


def ean13(body):
    """A valid EAN-13 from 12 digits."""
    total = sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(body))
    return body + str((10 - total % 10) % 10)


anonymous = Client(base_url=base, raise_on_unexpected_status=True)
tokens = expect(login.sync(client=anonymous, body=LoginRequest(
    email=os.environ["PIXEE_EMAIL"], password=os.environ["PIXEE_PASSWORD"])), TokenResponse, "login")
session = AuthenticatedClient(base_url=base, token=tokens.access_token,
                              raise_on_unexpected_status=True)
created_key = expect(create_api_key.sync(client=session, body=ApiKeyCreate.from_dict({
    "name": "generated client", "scopes": ["products:read", "products:write"]})),
    ApiKeyWithSecret, "create key")
keyed = AuthenticatedClient(base_url=base, token=created_key.key, prefix="",
                            auth_header_name="X-API-Key", raise_on_unexpected_status=True)
eans = [ean13(f"40000000{n:04d}") for n in range(3)]
products = [expect(create_product.sync(client=keyed, body=ProductInput.from_dict(
    {"ean": ean, "name": f"Generated {i}", "price": 9.5 + i})), Product, f"create {ean}")
    for i, ean in enumerate(eans)]
page = expect(list_products.sync(client=keyed, per_page=2), ProductList, "list")
second = expect(list_products.sync(client=keyed, per_page=2, page=2), ProductList, "list page 2")
one = expect(get_product.sync(client=keyed, id=products[0].id), Product, "get")
refused = expect(create_product.sync(client=keyed, body=ProductInput.from_dict(
    {"ean": "4000000000001", "name": "bad check digit"})), ValidationProblem, "422")
print(json.dumps({
    "token_type": tokens.token_type,
    "key_prefix": created_key.key[:8],
    "created": [p.ean for p in products],
    "listed": [p.ean for p in page.items] + [p.ean for p in second.items],
    "total": page.total,
    "pages": page.pages,
    "got": one.name,
    "price": one.price,
    "problem": {"status": refused.status, "error_code": str(refused.error_code),
                "fields": [e.field for e in refused.errors]},
}))
