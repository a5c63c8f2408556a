"""HTTPS: each site's certificate and switches."""

from __future__ import annotations

import json

from opus_paas.store.base import StoreBase
from opus_paas.store.records import (
    TLS_COLUMNS,
    TlsSite,
    tls_site_row,
)


class TlsStore(StoreBase):
    """Each site's HTTPS state."""

    def tls_site(self, site: str) -> TlsSite:
        """The site's HTTPS state (the defaults when nothing was recorded yet)."""
        with self._db() as db:
            row = db.execute("SELECT * FROM tls_sites WHERE site = ?", (site,)).fetchone()
        return tls_site_row(row) if row else TlsSite(site)

    def list_tls_sites(self) -> dict[str, TlsSite]:
        with self._db() as db:
            rows = db.execute("SELECT * FROM tls_sites").fetchall()
        return {row["site"]: tls_site_row(row) for row in rows}

    def set_tls_site(self, site: str, **values: object) -> None:
        """Set some of a site's HTTPS columns (TLS_COLUMNS), making its row if missing."""
        unknown = set(values) - TLS_COLUMNS
        if unknown:
            raise ValueError(f"not HTTPS columns: {sorted(unknown)}")
        if "domains" in values:
            values["domains"] = json.dumps(values["domains"])
        names = sorted(values)
        with self._db() as db:
            db.execute("INSERT OR IGNORE INTO tls_sites (site) VALUES (?)", (site,))
            if names:
                db.execute(f"UPDATE tls_sites SET {', '.join(f'{n} = ?' for n in names)} "  # noqa: S608
                           "WHERE site = ?", (*[values[n] for n in names], site))
