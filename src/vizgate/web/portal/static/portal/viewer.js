// The session viewer: noVNC's RFB in a page of vizgate's own.
//
// The WebSocket names the session by its public id (?session=ID) and the gateway lets the
// page's logged-in user in by the portal's session cookie, so the page never holds the
// session's token. The page opens the WebSocket itself and hands it to noVNC: that way it
// learns the close code and reason the gateway sends (noVNC's disconnect event carries
// neither), and shows the person why the session ended or failed.
//
// While the session starts, an overlay shows the script's progress, polled from the session's
// status URL. A connection that drops without a reason (close code 1006: a network hiccup, a
// proxy timeout) is opened again by itself while the session is still running; the gateway
// keeps a session for its linger time after the last viewer left, so the desktop is still
// there.
//
// The clipboard is shared by itself where the browser allows it (the asynchronous Clipboard
// API: HTTPS or localhost): what the session copies is written to this computer's clipboard
// while the page has the focus, and when the page gets the focus back (after something was
// copied in another window) this computer's clipboard is read and sent to the session. The
// browser asks once for permission to read it. The person can turn this off in the clipboard
// panel, which stays for copying by hand.
//
// A user who opened a share link watches only (config.viewOnly): noVNC sends no input, the
// page offers no control, and the gateway withholds input whatever the page does.

import RFB from '../novnc/core/rfb.js';

const config = JSON.parse(document.getElementById('viewer-config').textContent);

const byId = (id) => document.getElementById(id);
const screen = byId('screen');
const overlay = byId('overlay');
const overlayTitle = byId('overlay-title');
const overlayText = byId('overlay-text');
const overlayActions = byId('overlay-actions');
const overlayReconnect = byId('overlay-reconnect');
const spinner = byId('spinner');
const passwordForm = byId('password-form');
const passwordInput = byId('vnc-password');
const stateBadge = byId('state');
const scalingSelect = byId('scaling');
const clipboardPanel = byId('clipboard');
const clipboardButton = byId('clipboard-button');
const clipboardText = byId('clipboard-text');
const clipboardAuto = byId('clipboard-auto');
const fullscreenButton = byId('fullscreen');

const POLL_MS = 700;
const SCALING_KEY = 'vizgate.viewer.scaling';
const CLIPBOARD_KEY = 'vizgate.viewer.clipboard';
// States in which the gateway still accepts viewers of a session.
const LIVE_STATES = new Set(['reserved', 'starting', 'waiting_ready', 'running']);
// RFC 6455 §7.4.1: 1008 is the gateway refusing this viewer; no retry can change that.
const CLOSE_POLICY_VIOLATION = 1008;
const CLOSE_INTERNAL_ERROR = 1011;
// What the overlay says while a session starts, when its script reports no progress.
const PHASES = {
    reserved: 'Starting the session…',
    starting: 'Starting the session…',
    waiting_ready: 'Waiting for the VNC server…',
    running: 'Connecting…',
};

let current = null;   // the connection in use: {socket, rfb, close, connected, leaving}
let finished = false; // a final message is shown; nothing happens by itself any more
let drop = null;      // while reconnecting: {first: the close that began it, deadline}
let pollTimer = null;
let retryTimer = null;
let connects = 0;     // how many times a connection was established (shown as data-connects)
let sharedText = null; // the clipboard text both sides last had in common

// --- what the person sees ---------------------------------------------------------------------

function show(kind, title, text, { busy = false, actions = false } = {}) {
    document.body.dataset.viewer = kind;
    stateBadge.textContent = {
        starting: 'starting', connected: 'connected', reconnecting: 'reconnecting',
        ended: 'ended', failed: 'failed', refused: 'refused', credentials: 'password',
    }[kind] || kind;
    stateBadge.className = 'state ' + (kind === 'connected' ? 'connected'
        : ['failed', 'refused', 'ended'].includes(kind) ? 'failed' : '');
    if (kind === 'connected') {
        overlay.hidden = true;
        return;
    }
    overlay.hidden = false;
    overlay.className = ['failed', 'refused'].includes(kind) ? 'failed' : '';
    overlayTitle.textContent = title;
    overlayText.textContent = text;
    spinner.hidden = !busy;
    overlayActions.hidden = !actions;
    passwordForm.hidden = kind !== 'credentials';
}

// A final message. ``over``: the session itself is gone (ended, failed to start) or not this
// person's; then nothing that acts on it is offered. A lost connection may be retried.
function showFinal(kind, title, text, { over = true } = {}) {
    finished = true;
    drop = null;
    clearTimeout(retryTimer);
    if (over) {
        document.body.dataset.over = 'true';
    }
    overlayReconnect.hidden = over;
    show(kind, title, text, { actions: true });
}

function showEnded(reason) {
    showFinal('ended', 'Session ended', reason || 'The session is over.');
}

// --- the session's status -----------------------------------------------------------------------

async function fetchStatus() {
    try {
        const response = await fetch(config.statusUrl, {
            cache: 'no-store', credentials: 'same-origin', headers: { Accept: 'application/json' },
        });
        if (response.status === 404) {
            return { state: 'ended', message: '' };
        }
        return response.ok ? await response.json() : null;
    } catch {
        return null;  // The gateway is unreachable right now.
    }
}

async function poll() {
    pollTimer = null;
    if (finished || (current && current.connected)) {
        return;
    }
    const status = await fetchStatus();
    if (status && !finished && current && !current.connected && !drop) {
        if (status.state === 'ended' && !current.socketOpen) {
            showEnded(status.message);
            return;
        }
        if (LIVE_STATES.has(status.state) && document.body.dataset.viewer === 'starting') {
            overlayText.textContent = status.progress || PHASES[status.state] || '';
        }
    }
    pollTimer = setTimeout(poll, POLL_MS);
}

function startPolling() {
    clearTimeout(pollTimer);
    pollTimer = setTimeout(poll, 0);
}

// --- the connection ---------------------------------------------------------------------------

function socketUrl() {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return `${scheme}//${location.host}${config.wsPath}`;
}

function connect() {
    clearTimeout(retryTimer);
    finished = false;
    const socket = new WebSocket(socketUrl(), ['binary']);
    const conn = { socket, rfb: null, close: null, connected: false, leaving: false,
                   socketOpen: false };
    // Registered before noVNC's handlers, so the close is known when noVNC reports it.
    socket.addEventListener('open', () => { conn.socketOpen = true; });
    socket.addEventListener('close', (event) => {
        conn.socketOpen = false;
        conn.close = { code: event.code, reason: event.reason };
    });
    const rfb = new RFB(screen, socket, { shared: true });
    rfb.viewOnly = Boolean(config.viewOnly);
    conn.rfb = rfb;
    current = conn;
    rfb.background = '#282828';
    applyScaling();
    rfb.addEventListener('connect', () => onConnect(conn));
    rfb.addEventListener('disconnect', () => onDisconnect(conn));
    rfb.addEventListener('credentialsrequired', () => {
        if (conn === current) {
            show('credentials', 'Password needed', '');
            passwordInput.focus();
        }
    });
    rfb.addEventListener('securityfailure', (event) => {
        if (conn === current) {
            conn.leaving = true;
            showFinal('refused', 'The VNC server refused the connection',
                event.detail.reason || 'authentication failed', { over: false });
        }
    });
    rfb.addEventListener('clipboard', (event) => clipboardFromSession(event.detail.text));
    rfb.addEventListener('desktopname', (event) => {
        document.title = `${event.detail.name} – vizgate`;
    });
    if (!drop) {
        show('starting', `Starting ${config.service}…`, '', { busy: true });
    }
    startPolling();
}

function onConnect(conn) {
    if (conn !== current) {
        return;
    }
    conn.connected = true;
    drop = null;
    connects += 1;
    document.body.dataset.connects = String(connects);
    show('connected');
    conn.rfb.focus();
    clipboardToSession();
}

function onDisconnect(conn) {
    if (conn !== current || conn.leaving) {
        return;
    }
    current.connected = false;
    const close = conn.close || { code: 1006, reason: '' };
    if (close.code === CLOSE_POLICY_VIOLATION) {
        // Refused while reconnecting: the session ended meanwhile, and the first close said why.
        if (drop && drop.first.reason) {
            showEnded(drop.first.reason);
        } else {
            const title = config.viewOnly ? 'You can no longer watch this session'
                : 'The gateway refused the connection';
            showFinal('refused', title, close.reason);
        }
        return;
    }
    recover(close);
}

async function recover(close) {
    if (!drop) {
        const seconds = Math.max(Number(config.linger) || 0, 5);
        drop = { first: close, deadline: Date.now() + seconds * 1000, attempt: 0 };
    }
    const status = await fetchStatus();
    if (finished || !drop) {
        return;
    }
    const reason = drop.first.reason || close.reason;
    if (status && !LIVE_STATES.has(status.state)) {
        // Ended, or ending: the reason the gateway gave when it closed says why.
        if (drop.first.code === CLOSE_INTERNAL_ERROR) {
            showFinal('failed', 'The session failed', reason || status.message);
        } else {
            showEnded(reason || status.message);
        }
        return;
    }
    if (Date.now() > drop.deadline) {
        showFinal('failed', 'Connection lost', reason || 'The connection to the gateway dropped.',
            { over: false });
        return;
    }
    show('reconnecting', 'Connection lost', 'Reconnecting…', { busy: true });
    const delay = Math.min(500 * 2 ** drop.attempt, 3000);
    drop.attempt += 1;
    retryTimer = setTimeout(connect, delay);
}

function leaveCurrent() {
    if (current) {
        current.leaving = true;
        if (current.rfb) {
            current.rfb.disconnect();
        }
    }
}

// --- the toolbar ------------------------------------------------------------------------------

function applyScaling() {
    const mode = scalingSelect.value;
    if (current && current.rfb) {
        current.rfb.clipViewport = false;
        current.rfb.scaleViewport = mode === 'fit';
        current.rfb.resizeSession = mode === 'remote' && !config.viewOnly;
    }
}

function focusScreen() {
    if (current && current.connected) {
        current.rfb.focus();
    }
}

scalingSelect.value = localStorage.getItem(SCALING_KEY) || 'fit';
if (!scalingSelect.value) {
    scalingSelect.value = 'fit';  // 'remote' is not offered to a viewer who only watches
}
scalingSelect.addEventListener('change', () => {
    localStorage.setItem(SCALING_KEY, scalingSelect.value);
    applyScaling();
    focusScreen();
});

byId('ctrl-alt-del')?.addEventListener('click', () => {
    if (current && current.connected) {
        current.rfb.sendCtrlAltDel();
    }
    focusScreen();
});

fullscreenButton.addEventListener('click', async () => {
    try {
        if (document.fullscreenElement) {
            await document.exitFullscreen();
        } else {
            await document.documentElement.requestFullscreen();
        }
    } catch {
        // The browser refused (no user gesture, or not allowed): nothing to do.
    }
    focusScreen();
});
document.addEventListener('fullscreenchange', () => {
    fullscreenButton.textContent = document.fullscreenElement ? 'Exit full screen' : 'Full screen';
});

function reconnect() {
    leaveCurrent();
    drop = null;
    delete document.body.dataset.over;
    connect();
}
byId('reconnect').addEventListener('click', reconnect);
overlayReconnect.addEventListener('click', reconnect);

function toggleClipboard(open) {
    clipboardPanel.hidden = !open;
    clipboardButton?.setAttribute('aria-expanded', String(open));
    if (open) {
        clipboardText.focus();
    } else {
        focusScreen();
    }
}
// Reading and writing the system clipboard need the asynchronous Clipboard API; a watcher's
// clipboard never reaches the session, and the gateway withholds the session's from watchers.
const clipboardShareable = Boolean(window.isSecureContext && navigator.clipboard
    && navigator.clipboard.readText && navigator.clipboard.writeText && !config.viewOnly);
if (clipboardShareable) {
    byId('clipboard-auto-label').hidden = false;
    clipboardAuto.checked = localStorage.getItem(CLIPBOARD_KEY) !== 'off';
    clipboardAuto.addEventListener('change', () => {
        localStorage.setItem(CLIPBOARD_KEY, clipboardAuto.checked ? 'on' : 'off');
        if (clipboardAuto.checked) {
            clipboardToSession();
        }
    });
    window.addEventListener('focus', clipboardToSession);
}

function sharingClipboard() {
    return clipboardShareable && clipboardAuto.checked;
}

function clipboardFromSession(text) {
    clipboardText.value = text;
    sharedText = text;
    if (sharingClipboard() && document.hasFocus()) {
        // Refused without the focus or the permission: the panel still has the text.
        navigator.clipboard.writeText(text).catch(() => {});
    }
}

async function clipboardToSession() {
    if (!sharingClipboard() || !current || !current.connected || !document.hasFocus()) {
        return;
    }
    let text;
    try {
        text = await navigator.clipboard.readText();
    } catch {
        return;  // Not allowed (the person said no), or the focus went away meanwhile.
    }
    if (text && text !== sharedText && current && current.connected) {
        sharedText = text;
        clipboardText.value = text;
        current.rfb.clipboardPasteFrom(text);
    }
}

clipboardButton?.addEventListener('click', () => toggleClipboard(clipboardPanel.hidden));
byId('clipboard-close').addEventListener('click', () => toggleClipboard(false));
byId('clipboard-send').addEventListener('click', () => {
    if (current && current.connected) {
        sharedText = clipboardText.value;
        current.rfb.clipboardPasteFrom(clipboardText.value);
    }
});
byId('clipboard-copy').addEventListener('click', async () => {
    try {
        await navigator.clipboard.writeText(clipboardText.value);
    } catch {
        clipboardText.select();  // No clipboard access: let the person copy it by hand.
    }
});

passwordForm.addEventListener('submit', (event) => {
    event.preventDefault();
    if (current && current.rfb) {
        current.rfb.sendCredentials({ password: passwordInput.value });
        passwordInput.value = '';
        show('starting', `Connecting to ${config.service}…`, '', { busy: true });
    }
});

byId('end-form')?.addEventListener('submit', (event) => {
    if (!window.confirm('End this session? Unsaved work in it is lost.')) {
        event.preventDefault();
        return;
    }
    leaveCurrent();
});

window.addEventListener('pagehide', () => {
    if (current) {
        current.leaving = true;
    }
});
// A page restored from the back/forward cache has lost its connection: open a new one.
window.addEventListener('pageshow', (event) => {
    if (event.persisted && !finished) {
        reconnect();
    }
});

// --- the warning before a limit ends the session -----------------------------------------------

// The gateway ends a session after a time without input (idle timeout) or at its maximum
// lifetime; the person gets a minute's warning. Input resets the idle timeout, so the warning
// goes away again when they type or move the mouse.
const WARN_SECONDS = 60;
const LIMIT_CHECK_MS = 5000;
const warning = document.getElementById('warning');
let limitTimer = null;

function describeLimit(because, seconds) {
    const left = seconds <= 1 ? 'now' : `in ${Math.ceil(seconds)} s`;
    if (because === 'idle_timeout') {
        return `This session ends ${left} because nobody used it for a while. ` +
            'Move the mouse or type to keep it.';
    }
    if (because === 'time_limit') {
        return `This session ends ${left}: its time on the cluster is up. Save your work.`;
    }
    return `This session ends ${left}: it reaches its maximum lifetime. Save your work.`;
}

// The owner sees how many people watch the session through share links.
const watchersBadge = document.getElementById('watchers');

function showWatchers(status) {
    if (!watchersBadge || !status) {
        return;
    }
    const count = status.state === 'running' ? status.watchers || 0 : 0;
    watchersBadge.textContent = count === 1 ? '1 watching' : `${count} watching`;
    watchersBadge.hidden = count === 0;
}

// --- the administrators' notice to users --------------------------------------------------------

// An administrator's notice ("maintenance on Friday from 18:00") shows over the desktop within
// a status check of being posted. Hidden, it stays hidden in this tab until its text changes.
const HIDDEN_NOTICE_KEY = 'vizgate.hidden-notice';
const notice = document.getElementById('notice');
const noticeText = notice.querySelector('.text');

function hiddenNotice() {
    try {
        return sessionStorage.getItem(HIDDEN_NOTICE_KEY);
    } catch {
        return null;  // Storage refused (a private window, a policy): the notice just shows.
    }
}

function showNotice(status) {
    if (!status) {
        return;  // The gateway did not answer: keep what is shown.
    }
    const text = status.notice || '';
    noticeText.textContent = text;
    notice.hidden = !text || text === hiddenNotice();
}

notice.querySelector('.hide').addEventListener('click', () => {
    try {
        sessionStorage.setItem(HIDDEN_NOTICE_KEY, noticeText.textContent);
    } catch {
        // Nowhere to remember it: hidden until the next status check.
    }
    notice.hidden = true;
});

async function watchLimits() {
    limitTimer = null;
    if (finished) {
        warning.hidden = true;
        return;
    }
    const status = await fetchStatus();
    showWatchers(status);
    showNotice(status);
    let next = LIMIT_CHECK_MS;
    if (status && status.ends_in !== null && status.ends_in !== undefined
            && status.ends_in <= WARN_SECONDS && status.state === 'running') {
        warning.textContent = describeLimit(status.ends_because, status.ends_in);
        warning.hidden = false;
        next = 1000;
    } else {
        warning.hidden = true;
        if (status && status.ends_in) {
            // Look again shortly before the warning is due.
            next = Math.min(LIMIT_CHECK_MS, Math.max(1000, (status.ends_in - WARN_SECONDS) * 1000));
        }
    }
    limitTimer = setTimeout(watchLimits, next);
}

// --- start ------------------------------------------------------------------------------------

if (config.status.state === 'ended') {
    showEnded(config.status.message);
} else {
    connect();
    limitTimer = setTimeout(watchLimits, 0);
}
