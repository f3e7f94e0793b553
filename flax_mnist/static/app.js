// The drawing pad and one panel per served model. Plain JS, no dependencies:
// the page must work with no network but the server's.
'use strict';

const SIDE = 280;            // The pad's own pixels, whatever its size on screen.
const PEN = 18;              // Stroke width in those pixels: MNIST-like at 20/28 of the pad.
const DEBOUNCE_MS = 120;     // Quiet time before a prediction while drawing...
const MAX_WAIT_MS = 400;     // ...but never longer than this between two.
const MODELS_POLL_MS = 2000; // How often the steps are refreshed (--watch).

const pad = document.getElementById('pad');
const context = pad.getContext('2d');
const hint = document.getElementById('hint');
const status = document.getElementById('status');
const models = document.getElementById('models');
const panelTemplate = document.getElementById('panel');

let panels = new Map();  // model name -> its elements
let hasInk = false;      // Anything drawn or loaded since the last clear.
let photo = null;        // The uploaded file, while nothing is drawn over it.
let request = 0;         // Only the newest request's answers are shown.
let timer = null;
let firstPending = 0;
let stroke = null;       // The pointer drawing now, and where it was.

function resetPad() {
  context.fillStyle = '#fff';
  context.fillRect(0, 0, SIDE, SIDE);
  context.lineCap = 'round';
  context.lineJoin = 'round';
  context.lineWidth = PEN;
  context.strokeStyle = '#000';
}

function padPoint(event) {
  const box = pad.getBoundingClientRect();
  return [(event.clientX - box.left) * SIDE / box.width,
          (event.clientY - box.top) * SIDE / box.height];
}

function dot([x, y]) {
  context.beginPath();
  context.arc(x, y, PEN / 2, 0, 2 * Math.PI);
  context.fillStyle = '#000';
  context.fill();
}

function line(from, to) {
  context.beginPath();
  context.moveTo(...from);
  context.lineTo(...to);
  context.stroke();
}

function inked() {
  hasInk = true;
  photo = null;
  hint.hidden = true;
  schedule();
}

pad.addEventListener('pointerdown', (event) => {
  if (event.button !== 0 || stroke) return;
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  const point = padPoint(event);
  stroke = {id: event.pointerId, last: point};
  dot(point);
  inked();
});

pad.addEventListener('pointermove', (event) => {
  if (!stroke || event.pointerId !== stroke.id) return;
  event.preventDefault();
  // Every sample since the last frame, so fast strokes stay smooth.
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
  for (const each of events.length ? events : [event]) {
    const point = padPoint(each);
    line(stroke.last, point);
    stroke.last = point;
  }
  inked();
});

function endStroke(event) {
  if (!stroke || event.pointerId !== stroke.id) return;
  stroke = null;
  predictSoon(0);
}
pad.addEventListener('pointerup', endStroke);
pad.addEventListener('pointercancel', endStroke);

function schedule() {
  const now = performance.now();
  if (timer === null) firstPending = now;
  predictSoon(now - firstPending >= MAX_WAIT_MS ? 0 : DEBOUNCE_MS);
}

function predictSoon(delay) {
  clearTimeout(timer);
  timer = setTimeout(() => { timer = null; predict(); }, delay);
}

function clearAll() {
  clearTimeout(timer);
  timer = null;
  request += 1;
  hasInk = false;
  photo = null;
  resetPad();
  hint.hidden = false;
  status.textContent = '';
  for (const panel of panels.values()) showBlank(panel, 'draw a digit');
}
document.getElementById('clear').addEventListener('click', clearAll);

async function predict() {
  if (!hasInk) return;
  const mine = ++request;
  const body = photo || await new Promise((done) => pad.toBlob(done, 'image/png'));
  await Promise.all([...panels.keys()].map(async (name) => {
    const panel = panels.get(name);
    panel.root.setAttribute('aria-busy', 'true');
    let answer;
    try {
      const response = await fetch(`/api/predict?model=${encodeURIComponent(name)}`, {
        method: 'POST', body,
        headers: {'Content-Type': body.type || 'application/octet-stream'}});
      answer = await response.json();
    } catch (error) {
      answer = {error: `no answer from the server (${error.message})`};
    }
    if (mine !== request) return;
    panel.root.removeAttribute('aria-busy');
    if (answer.error) showBlank(panel, answer.error);
    else show(panel, answer);
  }));
}

function show(panel, answer) {
  panel.digit.textContent = String(answer.digit);
  panel.step.textContent = String(answer.step);
  panel.message.textContent = '';
  panel.input.src = `data:image/png;base64,${answer.input}`;
  answer.probabilities.forEach((p, digit) => {
    const bar = panel.bars[digit];
    bar.li.dataset.value = p.toFixed(6);
    bar.li.classList.toggle('top', digit === answer.digit);
    bar.fill.style.width = `${(100 * p).toFixed(1)}%`;
    bar.value.textContent = `${(100 * p).toFixed(1)}%`;
  });
}

// No digit yet (or none found): no guess, no bars.
function showBlank(panel, message) {
  panel.digit.textContent = '';
  panel.message.textContent = message;
  panel.input.removeAttribute('src');
  for (const bar of panel.bars) {
    bar.li.dataset.value = '0';
    bar.li.classList.remove('top');
    bar.fill.style.width = '0';
    bar.value.textContent = '';
  }
}

function addPanel(model) {
  const root = panelTemplate.content.firstElementChild.cloneNode(true);
  root.dataset.model = model.name;
  root.querySelector('.name').textContent = model.name;
  root.querySelector('.arch').textContent = model.model;
  for (const element of root.querySelectorAll('[data-testid]')) {
    element.dataset.model = model.name;
  }
  const panel = {
    root,
    digit: root.querySelector('[data-testid="digit"]'),
    step: root.querySelector('[data-testid="step"]'),
    message: root.querySelector('[data-testid="message"]'),
    input: root.querySelector('[data-testid="input"]'),
    bars: [],
  };
  panel.step.textContent = String(model.step);
  const list = root.querySelector('.bars');
  for (let digit = 0; digit < 10; digit++) {
    const li = document.createElement('li');
    li.dataset.testid = 'probability';
    li.dataset.model = model.name;
    li.dataset.digit = String(digit);
    li.dataset.value = '0';
    li.innerHTML = '<span class="label"></span><span class="bar"><span></span></span>' +
                   '<span class="value"></span>';
    li.querySelector('.label').textContent = String(digit);
    list.append(li);
    panel.bars.push({li, fill: li.querySelector('.bar span'),
                     value: li.querySelector('.value')});
  }
  models.append(root);
  panels.set(model.name, panel);
}

// The steps in use; when a model moves to a newer checkpoint the drawing is
// read again, so you can watch a training model get better.
async function refreshModels() {
  let list;
  try {
    list = await (await fetch('/api/models')).json();
  } catch (error) {
    status.textContent = 'the server is not answering';
    return;
  }
  let newer = false;
  for (const model of list) {
    if (!panels.has(model.name)) addPanel(model);
    const step = panels.get(model.name).step;
    if (step.textContent !== String(model.step)) {
      step.textContent = String(model.step);
      newer = true;
    }
  }
  if (status.textContent === 'the server is not answering') status.textContent = '';
  if (newer && hasInk) predictSoon(0);
}

async function usePhoto(file) {
  if (!file) return;
  clearAll();
  photo = file;
  hasInk = true;
  hint.hidden = true;
  status.textContent = `photo: ${file.name}`;
  try {  // A preview on the pad; the server reads the file itself.
    const bitmap = await createImageBitmap(file);
    const scale = Math.min(SIDE / bitmap.width, SIDE / bitmap.height);
    const w = bitmap.width * scale, h = bitmap.height * scale;
    context.drawImage(bitmap, (SIDE - w) / 2, (SIDE - h) / 2, w, h);
  } catch (error) {
    status.textContent = `photo: ${file.name} (no preview in this browser)`;
  }
  predict();
}

const upload = document.getElementById('upload');
upload.addEventListener('change', () => {
  usePhoto(upload.files[0]);
  upload.value = '';
});

const drop = document.getElementById('drop');
document.addEventListener('dragover', (event) => {
  event.preventDefault();
  drop.classList.add('dragging');
});
document.addEventListener('dragleave', (event) => {
  if (!event.relatedTarget) drop.classList.remove('dragging');
});
document.addEventListener('drop', (event) => {
  event.preventDefault();
  drop.classList.remove('dragging');
  usePhoto(event.dataTransfer.files[0]);
});

resetPad();
refreshModels().then(() => {
  for (const panel of panels.values()) showBlank(panel, 'draw a digit');
  document.body.dataset.ready = 'true';
});
setInterval(refreshModels, MODELS_POLL_MS);
