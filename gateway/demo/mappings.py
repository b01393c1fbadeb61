"""Name mappings that let the gateway read the demo Dataverse and SAP fakes with the schema.

Each fake declares its entity sets as fake property -> Odoo field, so the
``EntityMap`` of a schema entity is that table read backwards.
"""

from __future__ import annotations

from gateway.demo.dataverse import DATAVERSE_SETS
from gateway.demo.odata_fake import EntitySetSpec
from gateway.demo.sap import SAP_SETS
from gateway.sources.mapping import EntityMap


def entity_maps(specs: list[EntitySetSpec]) -> dict[str, EntityMap]:
    """Return the ``EntityMap`` of each Odoo model that ``specs`` exposes."""
    return {spec.model: EntityMap(name=spec.name, attributes={
        odoo_field: prop for prop, odoo_field in spec.properties.items()})
        for spec in specs}


DATAVERSE_ENTITIES = entity_maps(DATAVERSE_SETS)
SAP_ENTITIES = entity_maps(SAP_SETS)
