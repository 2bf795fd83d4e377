"""Face data formats: MXNet RecordIO training sets, .bin verification sets, IJB-B/C, alignment.

Why pure Python/numpy readers: the datasets are produced by mxnet tools, but mxnet cannot live in the
training environment (it needs numpy<1.24), so the formats are implemented here and checked against
real mxnet in the interoperability tests.
"""

from gbcosface.data.errors import DataFormatError

__all__ = ["DataFormatError"]
