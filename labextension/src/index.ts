/**
 * sgl-jupyter JupyterLab 4 extension: %%sgl editing (emphasis, hover help, completions) and the engine
 * panel (left sidebar + status bar item + radix tree view) fed by comm `sgl_jupyter.panel`.
 * The widget front ends in ./widgets are built separately as anywidget ES modules.
 */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { EditorExtensionRegistry, IEditorExtensionRegistry } from '@jupyterlab/codemirror';
import { ICompletionProviderManager } from '@jupyterlab/completer';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { IStatusBar } from '@jupyterlab/statusbar';
import { LabIcon } from '@jupyterlab/ui-components';

import { SglCompletionProvider } from './completer';
import { sglEditorExtension } from './editor';
import { PanelConnection } from './panel/connection';
import { PanelModel } from './panel/model';
import { EnginePanel, EngineStatusItem, RadixTreePanel } from './panel/view';

const ICON_SVG = `<svg xmlns="http://www.w3.org/2000/svg" width="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <circle cx="12" cy="4" r="2.5"/><circle cx="5" cy="19" r="2.5"/><circle cx="12" cy="19" r="2.5"/><circle cx="19" cy="19" r="2.5"/>
    <path d="M11.2 6h1.6v4.2h6.2a1 1 0 0 1 1 1V16.6h-1.6V11.8h-5.6v4.8h-1.6v-4.8H5.6v4.8H4V11.2a1 1 0 0 1 1-1h6.2z"/>
  </g></svg>`;

export const sglIcon = new LabIcon({ name: 'sgl-jupyter:engine', svgstr: ICON_SVG });

export const CommandIDs = {
  showPanel: 'sgl-jupyter:show-panel',
  openTree: 'sgl-jupyter:open-radix-tree',
  flush: 'sgl-jupyter:flush-cache'
};

const editorPlugin: JupyterFrontEndPlugin<void> = {
  id: 'sgl-jupyter:editor',
  description: 'Emphasises SGLang DSL words and shows their help in %%sgl cells.',
  autoStart: true,
  requires: [IEditorExtensionRegistry],
  activate: (_app: JupyterFrontEnd, registry: IEditorExtensionRegistry) => {
    registry.addExtension({
      name: 'sgl-jupyter:dsl',
      factory: () => EditorExtensionRegistry.createImmutableExtension(sglEditorExtension())
    });
  }
};

const completerPlugin: JupyterFrontEndPlugin<void> = {
  id: 'sgl-jupyter:completer',
  description: 'Completions for SGLang DSL names and %%sgl options.',
  autoStart: true,
  requires: [ICompletionProviderManager],
  activate: (_app: JupyterFrontEnd, manager: ICompletionProviderManager) => {
    manager.registerProvider(new SglCompletionProvider());
  }
};

const panelPlugin: JupyterFrontEndPlugin<void> = {
  id: 'sgl-jupyter:engine-panel',
  description: 'Engine panel: model, KV usage, requests, cache hit rate, tokens/s of the current kernel.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [IStatusBar, ICommandPalette],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    statusBar: IStatusBar | null,
    palette: ICommandPalette | null
  ) => {
    // app.shell, not ILabShell: Notebook 7 has a left area too, so the panel works there as well.
    const shell = app.shell;
    const model = new PanelModel();
    const connection = new PanelConnection(model);

    const openTree = () => {
      const view = new RadixTreePanel(model, connection);
      shell.add(view, 'main', { mode: 'split-right' });
      shell.activateById(view.id);
    };
    const panel = new EnginePanel(model, connection, openTree);
    panel.title.icon = sglIcon;
    shell.add(panel, 'left', { rank: 900 });

    if (statusBar) {
      const item = new EngineStatusItem(model, () => shell.activateById(panel.id));
      statusBar.registerStatusItem('sgl-jupyter:engine-status', {
        item,
        align: 'left',
        rank: 5,
        isActive: () => true
      });
    }

    // Follow the kernel of the current notebook (the last one focused when another widget has focus).
    let followed: NotebookPanel | null = null;
    const follow = () => {
      const nb = followed;
      const kernel = nb?.sessionContext.session?.kernel ?? null;
      connection.setKernel(kernel, nb ? `${nb.title.label} (${kernel?.name ?? 'no kernel'})` : '');
    };
    tracker.currentChanged.connect((_, nb) => {
      if (!nb || nb === followed) {
        return;
      }
      followed?.sessionContext.kernelChanged.disconnect(follow);
      followed = nb;
      nb.sessionContext.kernelChanged.connect(follow);
      nb.sessionContext.ready.then(follow).catch(() => undefined);
      nb.disposed.connect(() => {
        if (followed === nb) {
          followed = null;
          follow();
        }
      });
      follow();
    });

    app.commands.addCommand(CommandIDs.showPanel, {
      label: 'SGL: Show Engine Panel',
      execute: () => shell.activateById(panel.id)
    });
    app.commands.addCommand(CommandIDs.openTree, {
      label: 'SGL: Open Radix Tree View',
      isEnabled: () => model.state === 'connected' && model.stats.backend === 'engine',
      execute: openTree
    });
    app.commands.addCommand(CommandIDs.flush, {
      label: 'SGL: Flush Radix Cache',
      isEnabled: () => model.state === 'connected' && model.stats.loaded,
      execute: () => connection.flush()
    });
    if (palette) {
      for (const command of Object.values(CommandIDs)) {
        palette.addItem({ command, category: 'sgl_jupyter' });
      }
    }
  }
};

export default [editorPlugin, completerPlugin, panelPlugin];
