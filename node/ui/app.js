// meshnode dashboard: plain JavaScript over the node's local API
// (/v1/...), signed in with the session cookie `meshnode ui` sets up.
// Every value from the API reaches the page as text (textContent), never
// as markup.
'use strict';
(() => {
  const main = document.getElementById('main');
  const banner = document.getElementById('banner');
  const pages = ['fleet', 'mesh', 'library', 'rooms', 'node'];
  // The session's page secret arrives once, in the sign-in redirect's
  // fragment; it is kept in this origin's storage (per port: another
  // local service cannot read it) and sent with every request.
  // An old sign-in link reopened from the browser's history brings a
  // stale secret: the one it replaced is kept until the new one is seen
  // to work, and put back if it does not.
  let previous = null;
  if (location.hash.startsWith('#session=')) {
    previous = localStorage.getItem('meshnode-session');
    localStorage.setItem('meshnode-session', location.hash.slice('#session='.length));
    history.replaceState(null, '', location.pathname + '#fleet');
  }
  const session = () => localStorage.getItem('meshnode-session') || '';
  const withSession = (path) => path + (path.includes('?') ? '&' : '?') + 'session=' + encodeURIComponent(session());
  const S = {
    page: '', status: null, nodes: [], peers: [], mesh: null, library: [], transfers: [], rooms: [],
    hist: [], msgs: new Map(), roomStream: null, roomStreamTopic: '', roomTopic: '', roomState: null, rendered: new Map(), down: false,
    events: null, stickyUntil: 0,
  };

  // ---- DOM helpers ----
  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    setAttrs(e, attrs);
    for (const k of kids.flat()) {
      if (k !== null && k !== undefined && k !== false) e.append(k instanceof Node ? k : String(k));
    }
    return e;
  }
  function svg(tag, attrs, ...kids) {
    const e = document.createElementNS('http://www.w3.org/2000/svg', tag);
    setAttrs(e, attrs);
    for (const k of kids.flat()) if (k !== null && k !== undefined) e.append(k instanceof Node ? k : String(k));
    return e;
  }
  function setAttrs(e, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
  }
  const short = (id) => (id || '').length > 12 ? id.slice(0, 6) + '…' + id.slice(-6) : (id || '');
  function bytes(n) {
    const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    n = Number(n) || 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + ' ' + u[i];
  }
  function ago(ms) {
    if (!ms) return '—';
    const s = Math.max(0, (Date.now() - ms) / 1000);
    if (s < 60) return Math.round(s) + ' s ago';
    if (s < 3600) return Math.round(s / 60) + ' min ago';
    return Math.round(s / 3600) + ' h ago';
  }
  const nameOf = (id) => {
    const n = S.nodes.find((x) => x.id === id);
    return n && n.name ? n.name : short(id);
  };

  // ---- API ----
  function showBanner(msg, sticky) {
    if (S.signedOut) return; // the sign-out message stays
    banner.textContent = msg;
    banner.hidden = false;
    if (sticky) S.stickyUntil = Date.now() + 8000; // an action's failure stays to be read
  }
  function clearBanner() {
    if (!S.down && Date.now() >= S.stickyUntil) banner.hidden = true;
  }
  async function api(method, path, body) {
    let r;
    try {
      const headers = { 'X-Meshnode-Session': session() };
      if (body !== undefined) headers['Content-Type'] = 'application/json';
      r = await fetch(path, {
        method, credentials: 'same-origin', headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      S.down = true;
      showBanner('The node is not reachable: it may have stopped. Start it again (meshnode run); this page reconnects by itself.');
      throw e;
    }
    if (r.status === 401 && previous) {
      localStorage.setItem('meshnode-session', previous); // try the one it replaced
      previous = null;
      throw new Error('unauthorized');
    }
    previous = null;
    if (r.status === 401) {
      S.down = true;
      showBanner('The dashboard session has expired or the node restarted. Run "meshnode ui" for a new sign-in link.');
      throw new Error('unauthorized');
    }
    S.down = false;
    const ct = r.headers.get('Content-Type') || '';
    const data = ct.includes('json') ? await r.json() : await r.text();
    if (!r.ok) throw new Error((data && data.error && data.error.message) || r.statusText);
    return data;
  }
  async function act(what, method, path, body) {
    let ok = false;
    try {
      await api(method, path, body);
      ok = true;
    } catch (e) {
      if (!S.down) showBanner(what + ' failed: ' + e.message, true);
    }
    refreshSoon();
    return ok;
  }

  // ---- data ----
  let refreshing = false;
  async function refresh() {
    if (refreshing || S.signedOut) return;
    refreshing = true;
    try {
      const names = ['status', 'nodes', 'peers', 'mesh', 'library', 'transfers', 'rooms'];
      const got = await Promise.allSettled(names.map((n) => api('GET', '/v1/' + n)));
      const failed = [];
      got.forEach((g, i) => {
        if (g.status === 'fulfilled') S[names[i]] = g.value;
        else failed.push(names[i] + ': ' + g.reason.message);
      });
      if (S.down) return;
      if (failed.length) showBanner('The node could not answer ' + failed.join('; '), true);
      else clearBanner();
      listen();
      if (S.roomTopic) {
        await loadRoomState(S.roomTopic);
        watchRoom(S.roomTopic);
      }
      if (S.status) document.getElementById('self-name').textContent = S.status.name ? '· ' + S.status.name : '';
      if (S.status) render();
    } catch (e) {
      // shown in the banner
    } finally {
      refreshing = false;
    }
  }
  // Events come in bursts (a transfer reports every second): at most one
  // refresh in flight and one waiting.
  let soon = null;
  function refreshSoon() {
    if (soon) return;
    soon = setTimeout(() => { soon = null; refresh(); }, 400);
  }
  async function sample() {
    if (S.signedOut) return;
    try {
      const text = await api('GET', '/metrics');
      const v = (name) => {
        const m = text.match(new RegExp('^meshnode_' + name + ' ([0-9.e+]+)$', 'm'));
        return m ? Number(m[1]) : 0;
      };
      S.hist.push({
        t: Date.now(), peers: v('peers'),
        sync: v('sync_bytes_received_total') + v('sync_bytes_sent_total'), fetched: v('transfer_fetched_bytes_total'),
      });
      if (S.hist.length > 150) S.hist.shift();
      if (S.page === 'node') render();
    } catch (e) {
      // shown in the banner
    }
  }
  // listen (re)opens the node's event stream; a stream the server ended
  // (the node restarted, the session ended) is opened again at the next
  // refresh that succeeds.
  function listen() {
    if (S.signedOut || (S.events && S.events.readyState !== EventSource.CLOSED)) return;
    const es = new EventSource(withSession('/v1/events'));
    S.events = es;
    es.onmessage = refreshSoon;
    for (const t of ['peer.up', 'peer.down', 'node.joined', 'node.stale', 'node.left', 'doc.changed', 'item.scanned',
      'transfer.progress', 'transfer.done', 'transfer.failed', 'transfer.cancelled', 'transfer.moved', 'room.minted',
      'room.connected', 'room.dropped']) {
      es.addEventListener(t, refreshSoon);
    }
    es.onerror = () => { refreshSoon(); };
  }

  // ---- pages ----
  // render draws the current page, only where its data changed, so that
  // a button under the pointer or a field being typed in stays put.
  // A page may name parts (container id, key, build) that change on their
  // own: those are redrawn alone, and the rest of the page (a form being
  // filled in) stays as it is.
  function render() {
    const draw = { fleet: fleetPage, mesh: meshPage, library: libraryPage, rooms: roomsPage, node: nodePage }[S.page];
    const [key, build, parts] = draw();
    if (S.rendered.get(S.page) !== key || !main.childElementCount) {
      S.rendered.set(S.page, key);
      const keep = focused();
      main.replaceChildren(...build());
      for (const [id] of parts || []) S.rendered.delete(S.page + '#' + id);
      refocus(keep);
    }
    for (const [id, pkey, pbuild] of parts || []) {
      const box = document.getElementById(id);
      if (!box || S.rendered.get(S.page + '#' + id) === pkey) continue;
      S.rendered.set(S.page + '#' + id, pkey);
      const keep = focused();
      box.replaceChildren(...pbuild());
      refocus(keep);
    }
  }
  // focused names the element with the keyboard focus inside the page
  // (its id or data-key), for refocus to find its copy after a redraw.
  function focused() {
    const a = document.activeElement;
    if (!a || !main.contains(a)) return null;
    return a.id ? ['id', a.id] : a.dataset.key ? ['key', a.dataset.key] : null;
  }
  function refocus(k) {
    if (!k) return;
    const e = k[0] === 'id' ? document.getElementById(k[1]) : main.querySelector(`[data-key="${CSS.escape(k[1])}"]`);
    if (e) e.focus();
  }

  function linkOf(id) {
    if (S.status && id === S.status.id) return 'this node';
    const p = S.peers.find((x) => x.id === id);
    if (!p) return '—';
    const relayed = (p.addr || '').includes('/p2p-circuit') || (S.mesh && (S.mesh.relayed_peers || []).includes(id));
    return (relayed ? 'relayed' : 'direct') + ' (' + p.transport + ')';
  }

  function fleetPage() {
    const nodes = S.nodes.slice().sort((a, b) => (a.name || a.id).localeCompare(b.name || b.id));
    const rows = nodes.map((n) => [n.id, n.name, n.state, (n.roles || []).join(', '), (n.addrs || []).join(' '), n.last_heard_ms, linkOf(n.id)]);
    const key = JSON.stringify(rows.map((r) => r.slice(0, 5).concat([r[6], ago(r[5])])));
    return [key, () => [
      el('h2', {}, 'Fleet: ', el('span', { id: 'fleet-count' }, nodes.length + (nodes.length === 1 ? ' node' : ' nodes'))),
      el('div', { class: 'card' }, el('table', { id: 'fleet-table' },
        el('caption', { class: 'muted' }, 'Every node in the fleet document; state from heartbeats.'),
        el('thead', {}, el('tr', {}, el('th', { scope: 'col' }, 'Name'), el('th', { scope: 'col' }, 'State'), el('th', { scope: 'col' }, 'Roles'),
          el('th', { scope: 'col', class: 'wide' }, 'Addresses'), el('th', { scope: 'col' }, 'Last heard'), el('th', { scope: 'col' }, 'Link'))),
        el('tbody', {}, nodes.map((n) => el('tr', { 'data-node': n.id },
          el('td', {}, el('strong', {}, n.name || '(no name)'), el('div', { class: 'mono muted' }, short(n.id))),
          el('td', { class: 'state-' + n.state }, n.state),
          el('td', {}, (n.roles || []).join(', ') || '—'),
          el('td', { class: 'mono wide' }, (n.addrs || []).join('\n') || '—'),
          el('td', {}, n.self ? 'now' : ago(n.last_heard_ms)),
          el('td', {}, linkOf(n.id)))))))]];
  }

  function meshPage() {
    const m = S.mesh || { slots: [], skipped: {}, recent_drops: [] };
    const self = S.status ? S.status.id : '';
    // Around this node: its links, its connections, the rendezvous and
    // relays, then others up to a readable number.
    const conns = S.peers.filter((p) => p.authenticated).map((p) => p.id).sort();
    const near = new Set([...m.slots.map((s) => s.peer), ...conns]);
    const marked = (n) => near.has(n.id) || (n.roles || []).some((r) => r === 'rendezvous' || r === 'relay');
    const all = S.nodes.filter((n) => n.id !== self).sort((a, b) => (marked(b) - marked(a)) || a.id.localeCompare(b.id));
    const others = all.slice(0, Math.max(40, all.filter(marked).length));
    const hidden = all.length - others.length;
    const key = JSON.stringify([self, others.map((n) => [n.id, n.name, n.state, n.roles]), m.slots.map((s) => [s.peer, !!s.relayed]), conns, m.skipped, m.cap]);
    return [key, () => {
      const W = 640, H = 440, cx = W / 2, cy = H / 2, R = 170;
      const pos = new Map([[self, [cx, cy]]]);
      others.forEach((n, i) => {
        const a = (2 * Math.PI * i) / Math.max(1, others.length) - Math.PI / 2;
        pos.set(n.id, [cx + R * Math.cos(a), cy + R * Math.sin(a)]);
      });
      const g = svg('svg', { class: 'graph', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-labelledby': 'mesh-title' },
        svg('title', { id: 'mesh-title' }, `Mesh of ${others.length + 1} nodes: ${m.slots.length} supplementary links from this node`));
      const slotPeers = new Set(m.slots.map((s) => s.peer));
      for (const id of conns) {
        if (slotPeers.has(id) || !pos.has(id)) continue;
        const [x, y] = pos.get(id);
        g.append(svg('line', { class: 'conn', x1: cx, y1: cy, x2: x, y2: y, stroke: '#b8bfcc', 'stroke-width': 1 }));
      }
      for (const s of m.slots) {
        if (!pos.has(s.peer)) continue;
        const [x, y] = pos.get(s.peer);
        g.append(svg('line', { class: 'edge' + (s.relayed ? ' relayed' : ''), 'data-peer': s.peer, x1: cx, y1: cy, x2: x, y2: y }));
      }
      const me = S.nodes.find((n) => n.id === self) || { name: 'this node', roles: [] };
      for (const n of [me, ...others]) {
        const id = n.id || self;
        const [x, y] = pos.get(id) || [cx, cy];
        const roles = (n.roles || []).slice();
        if (/rendezvous/.test((m.skipped || {})[id] || '') && !roles.includes('rendezvous')) roles.push('rendezvous');
        const cls = [id === self ? 'self' : '', roles.includes('rendezvous') ? 'rendezvous' : '', roles.includes('relay') ? 'relay' : '', n.state || ''].join(' ').trim();
        g.append(svg('g', { class: 'node', 'data-node': id },
          svg('circle', { class: cls, cx: x, cy: y, r: id === self ? 14 : 10 }),
          svg('text', { x: x + 14, y: y - 12 }, (n.name || short(id)) + (roles.length ? ' (' + roles.join(', ') + ')' : ''))));
      }
      const skipped = Object.entries(m.skipped || {});
      return [
        el('h2', {}, 'Mesh'),
        el('p', { class: 'muted' }, `This node holds ${m.slots.length} of at most ${m.cap} supplementary links.` +
          (hidden > 0 ? ` ${hidden} more nodes, with no link to this one, are not drawn (the fleet page lists them).` : '')),
        el('div', { class: 'card' }, g,
          el('p', { class: 'legend' }, 'Solid blue: supplementary link, direct. Dashed orange: through a relay. Thin grey: other connections (rendezvous, peers that dialled here). Yellow: rendezvous or relay nodes; dashed circles: stale or left.')),
        el('h2', {}, 'Skipped peers'),
        el('div', { class: 'card' }, skipped.length === 0 ? el('p', { class: 'muted' }, 'None.') :
          el('table', { id: 'mesh-skipped' }, el('thead', {}, el('tr', {}, el('th', { scope: 'col' }, 'Peer'), el('th', { scope: 'col' }, 'Why'))),
            el('tbody', {}, skipped.map(([p, why]) => el('tr', {}, el('td', {}, nameOf(p)), el('td', {}, why)))))),
      ];
    }];
  }

  function libraryPage() {
    const items = S.library;
    const ts = S.transfers;
    const key = JSON.stringify([items, ts.map((t) => [t.id, t.state, t.done_bytes, t.total_bytes, t.error, t.by_source, t.manifest])]);
    return [key, () => [
      el('h2', {}, 'Library'),
      el('div', { class: 'card' }, items.length === 0 ? el('p', { class: 'muted' }, 'No items yet. Each folder in a node\'s share folder is an item.') :
        el('table', { id: 'library-table' },
          el('thead', {}, el('tr', {}, ['Item', 'Size', 'Versions', 'Holders', 'Here', 'Following', 'Actions'].map((h) => el('th', { scope: 'col', class: ['Versions', 'Holders', 'Following'].includes(h) ? 'wide' : null }, h)))),
          el('tbody', {}, items.map(itemRow)))),
      el('h2', {}, 'Transfers'),
      el('div', { class: 'card', id: 'transfers' }, ts.length === 0 ? el('p', { class: 'muted' }, 'No downloads since the node started.') : ts.map(transferView)),
    ]];
  }
  function itemRow(it) {
    const latest = it.versions.find((v) => v.manifest === it.latest) || it.versions[0] || { size: 0, files: 0 };
    const busy = it.local === 'downloading';
    const canGet = !busy && it.local !== 'complete' && it.latest;
    return el('tr', { 'data-item': it.id },
      el('td', {}, el('strong', {}, it.name || it.id), it.name && it.name !== it.id ? el('div', { class: 'muted' }, it.id) : null),
      el('td', {}, bytes(latest.size), el('div', { class: 'muted' }, latest.files + ' files')),
      el('td', { class: 'wide' }, it.versions.map((v) => el('div', { class: 'mono' + (v.manifest === it.latest ? '' : ' muted') },
        `gen ${v.gen} ${v.manifest.slice(0, 12)}${v.manifest === it.latest ? ' (latest)' : ''}`))),
      el('td', { class: 'wide' }, `${(latest.holders || []).length} complete`, el('div', { class: 'muted' }, `${(latest.partial_holders || []).length} partial`)),
      el('td', {}, it.local),
      el('td', { class: 'wide' }, it.following ? (it.follow_updated_ms ? 'updated ' + ago(it.follow_updated_ms) : 'yes') : '—'),
      el('td', {}, el('div', { class: 'row' },
        el('button', { type: 'button', 'data-action': 'download', 'data-key': 'download:' + it.id, disabled: !canGet, 'aria-label': 'Download ' + it.id,
          onclick: () => act('Download of ' + it.id, 'POST', '/v1/items/' + encodeURIComponent(it.id) + '/download', {}) }, 'Download'),
        el('button', { type: 'button', class: 'secondary', 'data-action': 'follow', 'data-key': 'follow:' + it.id, 'aria-label': (it.following ? 'Stop following ' : 'Follow ') + it.id,
          onclick: () => act('Follow', it.following ? 'DELETE' : 'POST', '/v1/items/' + encodeURIComponent(it.id) + '/follow') }, it.following ? 'Unfollow' : 'Follow'))));
  }
  function transferView(t) {
    const pct = t.total_bytes > 0 ? Math.floor((100 * t.done_bytes) / t.total_bytes) : 0;
    const eta = t.state === 'running' && t.rate_bps > 0 ? Math.round((t.total_bytes - t.done_bytes) / t.rate_bps) + ' s' : '—';
    const sources = Object.entries(t.by_source || {}).sort((a, b) => b[1] - a[1]);
    return el('div', { class: 'transfer', 'data-transfer': t.id, 'data-state': t.state },
      el('div', { class: 'row' }, el('strong', { class: 'grow' }, t.item), el('span', { class: t.state === 'failed' ? 'bad' : t.state === 'done' ? 'ok' : '' }, t.state),
        t.state === 'running' ? el('button', { type: 'button', class: 'secondary', 'data-action': 'cancel', 'data-key': 'cancel:' + t.id, 'aria-label': 'Cancel the download of ' + t.item,
          onclick: () => act('Cancel', 'DELETE', '/v1/transfers/' + encodeURIComponent(t.id)) }, 'Cancel') : null),
      el('progress', { max: t.total_bytes || 1, value: t.done_bytes, 'aria-label': `Download of ${t.item}: ${pct}%` }),
      el('div', { class: 'muted' }, `${pct}% · ${bytes(t.done_bytes)} of ${bytes(t.total_bytes)} · ${bytes(t.rate_bps)}/s · ETA ${eta} · fetched ${bytes(t.fetched_bytes)}, reused ${bytes(t.reused_bytes)}`),
      (t.moved_from || []).length ? el('div', { class: 'muted' }, 'Moved to the new version ' + t.manifest.slice(0, 12)) : null,
      sources.length ? el('div', { class: 'muted' }, 'From: ' + sources.map(([p, n]) => nameOf(p) + ' ' + bytes(n)).join(', ')) : null,
      t.error ? el('div', { class: 'bad' }, t.error) : null);
  }

  function roomsPage() {
    const topic = S.roomTopic;
    const listKey = JSON.stringify(S.rooms.map((r) => [r.topic, r.room, r.open, r.present, (r.links || []).map((l) => [l.room, l.state])]));
    const list = () => [S.rooms.length === 0 ? el('p', { class: 'muted' }, 'No rooms yet.') :
      el('table', { id: 'rooms-table' },
        el('thead', {}, el('tr', {}, ['Topic', 'Room', 'Participants', 'Link here', ''].map((h) => el('th', { scope: 'col' }, h)))),
        el('tbody', {}, S.rooms.map((r) => el('tr', { 'data-topic': r.topic },
          el('td', {}, el('strong', {}, r.topic)),
          el('td', { class: 'mono' }, r.room ? r.room.slice(0, 12) : '—'),
          el('td', {}, (r.present || []).map(nameOf).join(', ') || '—'),
          el('td', {}, (r.links || []).map((l) => l.state + ' ' + l.room.slice(0, 8)).join(', ') || (r.open ? 'joining' : '—')),
          el('td', {}, el('button', { type: 'button', class: 'secondary', 'data-action': 'open-room', 'data-key': 'open-room:' + r.topic, 'aria-label': 'Open room ' + r.topic,
            onclick: () => openRoom(r.topic) }, 'Open'))))))];
    const st = S.roomState;
    const state = () => [st === null ? el('p', { class: 'muted' }, 'Loading…') : Object.keys(st).length === 0 ? el('p', { class: 'muted' }, 'No durable state.') :
      el('dl', { class: 'kv', id: 'room-state' }, Object.entries(st).flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, v)]))];
    return [topic, () => {
      const join = el('form', { class: 'row', id: 'join-form', onsubmit: (e) => { e.preventDefault(); const t = document.getElementById('join-topic').value.trim(); if (t) openRoom(t); } },
        el('label', { for: 'join-topic' }, 'Topic'), el('input', { type: 'text', id: 'join-topic', class: 'grow', placeholder: 'build-42' }),
        el('button', { type: 'submit' }, 'Join'));
      const out = [el('h2', {}, 'Rooms'), el('div', { class: 'card', id: 'rooms-list' }), el('div', { class: 'card' }, join)];
      if (topic) out.push(roomView(topic));
      return out;
    }, [['rooms-list', listKey, list], ['room-state-box', JSON.stringify(st), state]]];
  }
  function roomView(topic) {
    const box = el('div', { class: 'messages', id: 'room-messages', role: 'log', 'aria-label': 'Messages in ' + topic });
    for (const m of S.msgs.get(topic) || []) box.append(messageLine(m));
    const form = el('form', { class: 'row', id: 'send-form', onsubmit: (e) => {
      e.preventDefault();
      const input = document.getElementById('send-text');
      const text = input.value;
      if (!text) return;
      input.value = '';
      act('Send', 'POST', '/v1/rooms/' + encodeURIComponent(topic) + '/messages', { type: 'chat', text }).then((ok) => {
        if (!ok && !input.value) input.value = text; // not lost: the banner says why
      });
    } }, el('label', { for: 'send-text' }, 'Message'), el('input', { type: 'text', id: 'send-text', class: 'grow', autocomplete: 'off' }), el('button', { type: 'submit' }, 'Send'));
    return el('div', { class: 'card', id: 'room-view', 'data-topic': topic },
      el('div', { class: 'row' }, el('h2', { class: 'grow' }, 'Room: ' + topic),
        el('button', { type: 'button', class: 'secondary', onclick: () => { act('Leave', 'DELETE', '/v1/rooms/' + encodeURIComponent(topic) + '/join'); closeRoom(); render(); } }, 'Leave')),
      box, form,
      el('h2', {}, 'Durable state'),
      el('div', { id: 'room-state-box' }));
  }
  function messageLine(m) {
    return el('p', { 'data-sender': m.sender },
      el('strong', {}, nameOf(m.sender)), ' ', m.history ? el('span', { class: 'muted' }, '(earlier) ') : null, m.text !== undefined ? m.text : '(' + (m.payload || '').length + ' bytes)');
  }
  async function openRoom(topic) {
    if (S.roomTopic !== topic) closeRoom();
    S.roomTopic = topic;
    S.rendered.delete('rooms');
    render();
    await act('Join', 'POST', '/v1/rooms/' + encodeURIComponent(topic) + '/join');
    if (S.roomTopic !== topic) return; // another room was opened meanwhile
    watchRoom(topic);
    await loadRoomState(topic);
    render();
  }
  // watchRoom (re)opens the open room's message stream.
  function watchRoom(topic) {
    if (S.roomStream && S.roomStreamTopic === topic && S.roomStream.readyState !== EventSource.CLOSED) return;
    if (S.roomStream) S.roomStream.close();
    const es = new EventSource(withSession('/v1/rooms/' + encodeURIComponent(topic) + '/events'));
    S.roomStream = es;
    S.roomStreamTopic = topic;
    es.addEventListener('message', (ev) => {
      const e = JSON.parse(ev.data);
      if (!e.message) return;
      const m = { sender: e.message.sender, text: e.message.text, payload: e.message.payload, history: e.history };
      const list = S.msgs.get(topic) || [];
      list.push(m);
      S.msgs.set(topic, list.slice(-500));
      const box = document.getElementById('room-messages');
      if (box && S.roomTopic === topic) {
        box.append(messageLine(m));
        box.scrollTop = box.scrollHeight;
      }
    });
    for (const t of ['connected', 'dropped', 'gap', 'live']) es.addEventListener(t, refreshSoon);
  }
  async function loadRoomState(topic) {
    try {
      const st = await api('GET', '/v1/rooms/' + encodeURIComponent(topic) + '/state');
      if (S.roomTopic === topic) S.roomState = st;
    } catch (e) {
      // shown in the banner
    }
  }
  function closeRoom() {
    if (S.roomStream) S.roomStream.close();
    S.roomStream = null;
    S.roomStreamTopic = '';
    S.roomTopic = '';
    S.roomState = null;
    S.rendered.delete('rooms');
  }

  function nodePage() {
    const st = S.status || { document: { damage: [] }, addrs: [], heads: [] };
    const key = JSON.stringify([st, S.hist.length && S.hist[S.hist.length - 1].t]);
    return [key, () => {
      const d = st.document || { damage: [] };
      const rows = [['ID', st.id], ['Name', st.name], ['Fleet', st.fleet], ['Addresses', (st.addrs || []).join('\n')],
        ['Peers', st.peers], ['Uptime', Math.round(st.uptime_s || 0) + ' s'], ['Document', bytes(st.doc_bytes) + ' on disk, ' + bytes(d.state_bytes) + ' in force'],
        ['Heads', (st.heads || []).map((h) => h.slice(0, 12)).join(' ')], ['Epoch', (d.epoch || 0) + (d.epoch_id ? ' (' + d.epoch_id + ')' : '')],
        ['History', Math.round(100 * (d.history_share || 0)) + '% of the document'], ['Waiting changes', d.waiting_records || 0]];
      return [
        el('h2', {}, 'This node'),
        el('div', { class: 'card' }, el('dl', { class: 'kv', id: 'node-status' }, rows.flatMap(([k, v]) => [el('dt', {}, k), el('dd', { class: k === 'ID' || k === 'Addresses' ? 'mono' : null }, v)]))),
        el('h2', {}, 'Damage found at start'),
        el('div', { class: 'card' }, (d.damage || []).length === 0 ? el('p', { class: 'ok' }, 'None: the document\'s files were intact.') :
          el('table', {}, el('thead', {}, el('tr', {}, ['File', 'Problem', 'Lost', 'Kept as'].map((h) => el('th', { scope: 'col' }, h)))),
            el('tbody', {}, d.damage.map((x) => el('tr', {}, el('td', { class: 'mono' }, x.file), el('td', {}, x.problem), el('td', {}, x.lost), el('td', { class: 'mono' }, x.kept_as)))))),
        el('h2', {}, 'Last minutes'),
        el('div', { class: 'charts' },
          chart('Peers', S.hist.map((h) => h.peers), (v) => String(v)),
          chart('Sync bytes/s', rates('sync'), (v) => bytes(v) + '/s'),
          chart('Transfer rate', rates('fetched'), (v) => bytes(v) + '/s')),
      ];
    }];
  }
  function rates(field) {
    const out = [];
    for (let i = 1; i < S.hist.length; i++) {
      const dt = (S.hist[i].t - S.hist[i - 1].t) / 1000;
      out.push(dt > 0 ? Math.max(0, (S.hist[i][field] - S.hist[i - 1][field]) / dt) : 0);
    }
    return out;
  }
  function chart(title, values, fmt) {
    const W = 300, H = 60, top = Math.max(1, ...values);
    const pts = values.map((v, i) => `${values.length > 1 ? (i * W) / (values.length - 1) : 0},${H - 4 - ((H - 8) * v) / top}`).join(' ');
    const last = values.length ? values[values.length - 1] : 0;
    return el('div', { class: 'chart' }, el('div', {}, title + ': ', el('strong', {}, fmt(last))),
      svg('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', role: 'img', 'aria-label': `${title} over the last minutes, now ${fmt(last)}` },
        svg('polyline', { points: pts })));
  }

  // ---- routing ----
  function route() {
    const p = location.hash.slice(1);
    S.page = pages.includes(p) ? p : 'fleet';
    for (const q of pages) {
      const a = document.getElementById('nav-' + q);
      if (q === S.page) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
    }
    document.title = 'meshnode · ' + document.getElementById('nav-' + S.page).textContent;
    S.rendered.delete(S.page);
    main.replaceChildren(el('p', { class: 'muted' }, 'Loading…'));
    if (S.status) render();
    main.focus();
  }
  document.getElementById('sign-out').addEventListener('click', async () => {
    try {
      await api('POST', '/v1/ui/logout');
    } catch (e) {
      // signed out either way
    }
    localStorage.removeItem('meshnode-session');
    if (S.events) S.events.close();
    closeRoom();
    S.down = true;
    showBanner('Signed out. Run "meshnode ui" for a new sign-in link.');
    S.signedOut = true;
  });
  window.addEventListener('hashchange', route);
  route();
  refresh();
  sample();
  listen();
  setInterval(refresh, 2000);
  setInterval(sample, 2000);
})();
