"""XML codec: KOMBIT ``Haendelsesbesked`` documents <-> :class:`~broker.envelope.Haendelsesbesked`.

Theory of operation
-------------------
This module is the codec's public surface and holds no logic; the implementation lives in the
:mod:`broker.xmlkuvert` package, one noun per module:

* :mod:`broker.xmlkuvert.limits` and :mod:`broker.xmlkuvert.namespaces`: the limits and namespace URIs;
* :mod:`broker.xmlkuvert.parser`: hardened lxml parsing (no DOCTYPE, no entities, nothing fetched;
  element count and nesting enforced while the tree is built);
* :mod:`broker.xmlkuvert.schema`: the XSD complex types as data, shared by both directions;
* :mod:`broker.xmlkuvert.content`: ``Beskeddata``/``…LokalUdvidelse`` content as standalone XML;
* :mod:`broker.xmlkuvert.decoder`: XML -> envelope (:func:`decode_xml`);
* :mod:`broker.xmlkuvert.encoder`: envelope -> XML (:func:`encode_xml` and friends).

Each module's docstring describes its part of the mapping. Import from here, not from the
package: callers import this module lazily to keep lxml off the JSON path's start-up.
"""

from __future__ import annotations

from broker.xmlkuvert.content import check_xml_item as check_xml_item
from broker.xmlkuvert.decoder import decode_xml as decode_xml
from broker.xmlkuvert.encoder import Envelope as Envelope
from broker.xmlkuvert.encoder import encode_modtag_besked_input as encode_modtag_besked_input
from broker.xmlkuvert.encoder import encode_stored as encode_stored
from broker.xmlkuvert.encoder import encode_xml as encode_xml
from broker.xmlkuvert.encoder import encode_xml_stored as encode_xml_stored
from broker.xmlkuvert.limits import MAX_CONTENT_DEPTH as MAX_CONTENT_DEPTH
from broker.xmlkuvert.limits import MAX_DEPTH as MAX_DEPTH
from broker.xmlkuvert.limits import MAX_ELEMENTS as MAX_ELEMENTS
from broker.xmlkuvert.limits import MAX_XML_BYTES as MAX_XML_BYTES
from broker.xmlkuvert.namespaces import JSON_NS as JSON_NS
from broker.xmlkuvert.namespaces import KUVERT_NAMESPACES as KUVERT_NAMESPACES
from broker.xmlkuvert.namespaces import KUVERT_NS as KUVERT_NS
from broker.xmlkuvert.namespaces import SAGDOK_NS as SAGDOK_NS
from broker.xmlkuvert.namespaces import STS_NS as STS_NS

# The resolver every parser installs, under its old name: tests patch it to prove that nothing
# is ever fetched.
from broker.xmlkuvert.parser import Deny as _Deny  # noqa: F401

__all__ = [
    "JSON_NS",
    "KUVERT_NS",
    "MAX_CONTENT_DEPTH",
    "MAX_DEPTH",
    "MAX_ELEMENTS",
    "MAX_XML_BYTES",
    "SAGDOK_NS",
    "STS_NS",
    "check_xml_item",
    "decode_xml",
    "encode_modtag_besked_input",
    "encode_stored",
    "encode_xml",
    "encode_xml_stored",
]
