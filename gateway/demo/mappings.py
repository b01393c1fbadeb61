"""Name mappings that let the gateway read the demo Dataverse, SAP and REST fakes with the schema.

Each fake declares its entity sets as fake property -> Odoo field, so the
``EntityMap`` of a schema entity is that table read backwards.
"""

from __future__ import annotations

from gateway.demo.dataverse import DATAVERSE_SETS
from gateway.demo.odata_fake import EntitySetSpec
from gateway.demo.rest import API_PATH, MAX_IDS, MAX_PAGE_SIZE, REST_RESOURCES
from gateway.demo.sap import SAP_SETS
from gateway.sources.mapping import EntityMap
from gateway.sources.rest import Paging, Resource, RestSettings


def entity_maps(specs: list[EntitySetSpec]) -> dict[str, EntityMap]:
    """Return the ``EntityMap`` of each Odoo model that ``specs`` exposes."""
    return {spec.model: EntityMap(name=spec.name, attributes={
        odoo_field: prop for prop, odoo_field in spec.properties.items()})
        for spec in specs}


DATAVERSE_ENTITIES = entity_maps(DATAVERSE_SETS)
SAP_ENTITIES = entity_maps(SAP_SETS)


REST_ENTITIES = entity_maps(REST_RESOURCES)
# Attributes, in the demo REST ERP's names, that the schema's reads match or
# filter by other than the id.
REST_FILTERS = ("customer_id", "order_id", "order_number", "kind", "status")


def demo_rest_settings(base_url: str, api_key: str) -> RestSettings:
    """Return the settings with which the ``rest`` dialect reads the demo REST ERP."""
    return rest_fake_settings(REST_RESOURCES, REST_FILTERS, base_url, api_key)


def rest_fake_settings(specs: list[EntitySetSpec], filter_names: tuple[str, ...],
                       base_url: str, api_key: str) -> RestSettings:
    """Return the ``rest`` dialect's settings for a fake of ``gateway.demo.rest`` serving ``specs``.

    ``filter_names`` are the attributes, in the fake's names, that reads match
    or filter by other than the id.
    """
    paging = Paging(style="cursor", page_size=MAX_PAGE_SIZE, size_param="limit",
                    cursor_param="cursor", cursor_path="meta.next_cursor")
    resources = {}
    for spec in specs:
        filters = {name: name for name in filter_names if name in spec.properties}
        resources[spec.name] = Resource(path=spec.name, max_ids=MAX_IDS, max_url_bytes=8000,
                                        sort_param="sort", rows_path="data", filters=filters,
                                        paging=paging)
    return RestSettings(base_url=f"{base_url}{API_PATH}", resources=resources,
                        entities=entity_maps(specs),
                        auth_header=("Authorization", f"Bearer {api_key}"))
