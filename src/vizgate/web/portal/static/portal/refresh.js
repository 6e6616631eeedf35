// Keeps a page's live tables current: every few seconds the page is fetched again and each
// element marked data-refresh="NAME" is replaced by its new version. Nothing is replaced while
// the pointer is pressed or a form is being sent, so a click always hits what it aimed at, and
// an element is left as it is while one of its fields has the focus (what is being typed stays).
const INTERVAL_MS = 4000;

let busy = false;
document.addEventListener('pointerdown', () => { busy = true; });
document.addEventListener('pointerup', () => { setTimeout(() => { busy = false; }, 300); });
document.addEventListener('submit', () => { busy = true; });

async function refresh() {
    if (busy || document.hidden) {
        return;
    }
    let response;
    try {
        response = await fetch(location.href, { cache: 'no-store', credentials: 'same-origin' });
    } catch {
        return;  // The gateway is unreachable for a moment; try again later.
    }
    if (!response.ok || response.redirected || busy) {
        return;
    }
    const fresh = new DOMParser().parseFromString(await response.text(), 'text/html');
    for (const old of document.querySelectorAll('[data-refresh]')) {
        const name = old.getAttribute('data-refresh');
        const replacement = fresh.querySelector(`[data-refresh="${CSS.escape(name)}"]`);
        const typing = old.contains(document.activeElement)
            && document.activeElement.matches('input, textarea, select');
        if (replacement && !busy && !typing) {
            old.replaceWith(document.importNode(replacement, true));
        }
    }
}

setInterval(refresh, INTERVAL_MS);
