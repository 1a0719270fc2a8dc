// The console authenticates like any API client: an API key (rfx_...) or an OIDC token, sent as
// "Authorization: Bearer". It is kept in sessionStorage (gone when the tab closes). A link may
// carry it in the fragment (#key=...), which browsers never send to a server: `make demo` prints
// such a link; the fragment is read once and removed from the address bar.

const STORAGE_KEY = "reflux.credential";

export function takeCredentialFromFragment(location: Location, history: History): void {
  const match = /(?:^#|&)key=([^&]+)/.exec(location.hash);
  if (!match) return;
  setCredential(decodeURIComponent(match[1]));
  history.replaceState(null, "", location.pathname + location.search);
}

export function credential(): string | null {
  return sessionStorage.getItem(STORAGE_KEY);
}

export function setCredential(value: string): void {
  sessionStorage.setItem(STORAGE_KEY, value.trim());
}

export function forgetCredential(): void {
  sessionStorage.removeItem(STORAGE_KEY);
}
