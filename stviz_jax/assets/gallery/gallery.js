// The gallery's script (copied into DIR/gallery/ by stviz_jax.gallery).
// Lazy media: a video gets its source only when near the viewport and pauses
// when it leaves (hundreds of decoders would stall the page); images rely on
// loading="lazy". Sources are `data-stem` with "{setting}" replaced by the
// selected setting, plus the best format this browser plays.
(function () {
  'use strict';
  const dataEl = document.getElementById('gallery-data');
  const G = dataEl ? JSON.parse(dataEl.textContent) : {settings: []};
  const probe = document.createElement('video');
  const videoExt = probe.canPlayType('video/webm; codecs="vp9"') ? 'webm'
      : (probe.canPlayType('video/mp4; codecs="avc1.42E01E"') ? 'mp4' : 'gif');
  document.documentElement.dataset.videoFormat = videoExt;
  let current = null;

  function url(el) {
    const stem = el.dataset.stem.split('{setting}').join(encodeURIComponent(current || ''));
    return stem + '.' + (el.tagName === 'VIDEO' ? videoExt : (el.dataset.ext || 'png'));
  }
  function loadVideo(v) {
    const tile = v.closest('.tile');
    if (tile && tile.classList.contains('missing')) { return; }  // unit not run here.
    const want = url(v);
    if (v.getAttribute('src') !== want) { v.src = want; }
    const p = v.play(); if (p) { p.catch(function () {}); }
  }
  const io = ('IntersectionObserver' in window) ? new IntersectionObserver(function (es) {
    es.forEach(function (e) {
      const v = e.target; v._visible = e.isIntersecting;
      if (e.isIntersecting) { loadVideo(v); } else if (!v.paused) { v.pause(); }
    });
  }, {rootMargin: '300px 0px'}) : null;

  function gifFallback(v) {  // a browser without VP9 or H.264: looping GIF instead.
    const img = document.createElement('img');
    img.className = v.className; img.dataset.stem = v.dataset.stem; img.dataset.ext = 'gif';
    img.width = v.width; img.height = v.height; img.loading = 'lazy'; img.alt = v.title;
    img.src = url(img); v.replaceWith(img);
  }
  function setupVideos() {
    document.querySelectorAll('video[data-stem]').forEach(function (v) {
      if (videoExt === 'gif') { gifFallback(v); return; }
      if (io) { io.observe(v); } else { loadVideo(v); }
    });
  }
  function show(name) {
    if (!G.settings.some(function (s) { return s.name === name; })) { return; }
    current = name;
    document.querySelectorAll('input[name=setting]').forEach(function (r) {
      r.checked = (r.value === name); });
    document.querySelectorAll('.tile').forEach(function (t) {
      const acts = JSON.parse(t.dataset.acts || '{}');
      const have = name in acts;
      t.classList.toggle('missing', !have);
      const cap = t.querySelector('.act');
      if (cap) { cap.textContent = have ? 'a = ' + acts[name].toPrecision(3) : 'not run'; }
      const mi = t.querySelector('.mi');
      if (mi) {
        const m = JSON.parse(t.dataset.motion || '{}')[name];
        mi.textContent = (m === undefined || m === null) ? '' : ' · motion ' + m.toFixed(2);
      }
      const qual = t.querySelector('.quality');
      if (qual) { qual.textContent = JSON.parse(t.dataset.quality || '{}')[name] || ''; }
    });
    document.querySelectorAll('img[data-stem]').forEach(function (img) {
      const tile = img.closest('.tile');
      if (tile && tile.classList.contains('missing')) { return; }
      const want = url(img); if (img.getAttribute('src') !== want) { img.src = want; } });
    document.querySelectorAll('video[data-stem]').forEach(function (v) {
      if (v._visible || !io) { loadVideo(v); } });
    if (G.settings.length > 1) { history.replaceState(null, '', '#setting=' + encodeURIComponent(name)); }
    sortTiles();
  }
  function sortTiles() {
    const box = document.querySelector('.tiles'); const sel = document.getElementById('sort');
    if (!box || !sel) { return; }
    const tiles = Array.from(box.children);
    const key = function (t) {
      if (sel.value === 'unit') { return Number(t.dataset.unit); }
      const field = sel.value === 'motion' ? t.dataset.motion : t.dataset.acts;
      const a = JSON.parse(field || '{}')[current];
      return (a === undefined || a === null) ? Infinity : -a;
    };
    tiles.sort(function (a, b) { return key(a) - key(b); });
    tiles.forEach(function (t) { box.appendChild(t); });
  }
  function filterTiles() {
    const q = document.getElementById('find').value.trim();
    document.querySelectorAll('.tile').forEach(function (t) {
      t.style.display = (!q || t.dataset.unit === q) ? '' : 'none'; });
  }
  window.galleryShow = show;
  document.addEventListener('DOMContentLoaded', function () {
    document.querySelectorAll('input[name=setting]').forEach(function (r) {
      r.addEventListener('change', function () { show(r.value); }); });
    const sel = document.getElementById('sort'); if (sel) { sel.addEventListener('change', sortTiles); }
    const find = document.getElementById('find'); if (find) { find.addEventListener('input', filterTiles); }
    document.addEventListener('keydown', function (e) {  // [ and ] step through settings.
      if (e.target.tagName === 'INPUT' && e.target.type === 'search') { return; }
      const i = G.settings.findIndex(function (s) { return s.name === current; });
      if (e.key === ']' && i + 1 < G.settings.length) { show(G.settings[i + 1].name); }
      if (e.key === '[' && i > 0) { show(G.settings[i - 1].name); }
    });
    const m = /setting=([^&]+)/.exec(location.hash);
    current = m ? decodeURIComponent(m[1]) : (G.initial || null);
    if (!G.settings.some(function (s) { return s.name === current; })) { current = G.initial || null; }
    setupVideos();
    if (current) { show(current); }
  });
})();
