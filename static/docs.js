// The API reference page: renders /api/v1/openapi.json in the browser, with nothing fetched
// from outside the server. Every text from the document is inserted with textContent.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);

  function el(tag, className, text) {
    const e = document.createElement(tag);
    if (className) e.className = className;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // A short name for a schema: its $ref's last part, or its type.
  function typeOf(schema) {
    if (!schema) return '';
    if (schema.$ref) return schema.$ref.split('/').pop();
    if (schema.allOf) return schema.allOf.map(typeOf).filter(Boolean).join(' & ');
    if (schema.anyOf || schema.oneOf) return (schema.anyOf || schema.oneOf).map(typeOf).join(' | ');
    if (schema.type === 'array') return `${typeOf(schema.items)}[]`;
    if (Array.isArray(schema.type)) return schema.type.join(' | ');
    if (schema.enum) return schema.enum.map(String).join(' | ');
    return schema.type || (schema.const !== undefined ? JSON.stringify(schema.const) : 'object');
  }

  function resolve(doc, item) {
    if (!item || !item.$ref) return item;
    return item.$ref.split('/').slice(1).reduce((o, k) => (o ? o[k] : undefined), doc);
  }

  function auth(doc, op) {
    if (Array.isArray(op.security) && op.security.length === 0) return 'No credentials.';
    if (op['x-session-only']) return 'A user session (Authorization: Bearer); API keys are refused.';
    return 'An API key (X-API-Key) or a user session (Authorization: Bearer).';
  }

  function operation(doc, path, method, op, shared) {
    const box = el('details', 'card operation');
    box.id = op.operationId;
    const summary = el('summary');
    summary.append(el('span', `badge method method-${method}`, method.toUpperCase()), ' ',
      el('code', 'op-path', path), ' ', el('span', 'op-summary', op.summary || ''));
    box.append(summary);
    if (op.description) box.append(el('p', null, op.description));
    box.append(el('p', 'hint', auth(doc, op)));
    const params = [...(shared || []), ...(op.parameters || [])].map((p) => resolve(doc, p)).filter(Boolean);
    if (params.length) {
      const table = el('table', 'params');
      const head = el('tr');
      for (const h of ['Parameter', 'In', 'Type', 'Description']) head.append(el('th', null, h));
      table.append(head);
      for (const p of params) {
        const tr = el('tr');
        tr.append(el('td', null, `${p.name}${p.required ? ' *' : ''}`), el('td', null, p.in),
          el('td', null, typeOf(p.schema)), el('td', null, p.description || ''));
        table.append(tr);
      }
      box.append(table);
    }
    const body = op.requestBody && op.requestBody.content;
    if (body) {
      for (const [mime, media] of Object.entries(body)) {
        box.append(el('p', null, `Body (${mime}): ${typeOf(media.schema)}`));
      }
    }
    const list = el('ul', 'responses');
    for (const [code, raw] of Object.entries(op.responses || {})) {
      const r = resolve(doc, raw) || {};
      const media = r.content ? Object.values(r.content)[0] : null;
      const shape = media && media.schema ? ` → ${typeOf(media.schema)}` : '';
      list.append(el('li', null, `${code}: ${r.description || ''}${shape}`));
    }
    box.append(list);
    return box;
  }

  function schemas(doc) {
    const section = el('section', 'card');
    section.id = 'schemas';
    section.append(el('h2', null, 'Schemas'));
    for (const [name, schema] of Object.entries((doc.components || {}).schemas || {})) {
      const box = el('details', 'schema');
      box.id = `schema-${name}`;
      box.append(el('summary', null, name));
      if (schema.description) box.append(el('p', 'hint', schema.description));
      const props = schema.properties || {};
      const required = new Set(schema.required || []);
      const list = el('ul');
      for (const [prop, s] of Object.entries(props)) {
        list.append(el('li', null, `${prop}${required.has(prop) ? ' *' : ''}: ${typeOf(s)}${s.description ? ` — ${s.description}` : ''}`));
      }
      if (!Object.keys(props).length) list.append(el('li', null, typeOf(schema)));
      box.append(list);
      section.append(box);
    }
    return section;
  }

  function render(doc) {
    $('api-title').textContent = `${doc.info.title} ${doc.info.version}`;
    $('api-description').textContent = doc.info.description || '';
    const byTag = new Map((doc.tags || []).map((t) => [t.name, { tag: t, ops: [] }]));
    for (const [path, item] of Object.entries(doc.paths || {})) {
      for (const [method, op] of Object.entries(item)) {
        if (method === 'parameters') continue;
        const tag = (op.tags || ['other'])[0];
        if (!byTag.has(tag)) byTag.set(tag, { tag: { name: tag }, ops: [] });
        byTag.get(tag).ops.push(operation(doc, path, method, op, item.parameters));
      }
    }
    const main = $('operations');
    const toc = el('ul', 'toc');
    for (const { tag, ops } of byTag.values()) {
      if (!ops.length) continue;
      const section = el('section', 'tag-section');
      section.id = `tag-${tag.name}`;
      section.append(el('h2', null, tag.name));
      if (tag.description) section.append(el('p', 'hint', tag.description));
      section.append(...ops);
      main.append(section);
      const a = el('a', null, `${tag.name} (${ops.length})`);
      a.href = `#tag-${tag.name}`;
      const li = el('li');
      li.append(a);
      toc.append(li);
    }
    main.append(schemas(doc));
    $('toc').append(toc);
    $('intro').hidden = false;
    $('loading').hidden = true;
    document.body.dataset.operations = String(main.querySelectorAll('.operation').length);
  }

  fetch('/api/v1/openapi.json', { cache: 'no-cache' })
    .then((res) => {
      if (!res.ok) throw new Error(`The document could not be loaded (${res.status}).`);
      return res.json();
    })
    .then(render)
    .catch((e) => {
      $('loading').hidden = true;
      $('error').textContent = e.message;
      $('error').hidden = false;
    });
})();
