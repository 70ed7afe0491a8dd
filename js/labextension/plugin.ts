// The JupyterLab plugin of the package: a saved notebook whose widget models are gone shows each view's static
// rendering instead of "Error displaying widget: model not found".
//
// JupyterLab prefers the widget-view mime type of an output whenever the notebook is trusted (a notebook the user
// saved is), and jupyterlab_widgets' WidgetRenderer never falls back to the bundle's other types: with a notebook
// saved without widget state (JupyterLab's default), reopened with a fresh kernel or after a reload, every view says
// "model not found"; with no kernel it says "Loading widget..." for ever. Each of this package's views carries a
// script-free `text/html` rendering beside the view (gemscope_widgets/widgets/static_view.py, whose frame has the
// class `gs-static`). For every notebook, this plugin wraps the widget-view renderer the notebook's rendermime
// registry creates (the placeholder of @jupyter-widgets/jupyterlab-manager and the per-notebook one it registers
// once the kernel is ready, rank -10 both): when the renderer ends on "model not found", or is still waiting with no
// kernel, and the output's `text/html` is this package's, the `text/html` is rendered with the notebook's own
// `text/html` renderer (so the notebook's trust and sanitising rules apply) under a line saying it is a saved
// rendering. A live view, when it comes, replaces it.
//
// Only this package's outputs: the extension is installed for the whole environment, and another library's
// `text/html` beside a widget view is not necessarily a rendering of the same state.
//
// The plugin imports nothing from JupyterLab at run time (it reaches notebooks through `app.docRegistry`), so it
// needs no shared module and loads in every JupyterLab 4; the types below are the parts of JupyterLab's and
// Lumino's API it uses.

/** The widget-view mime type (@jupyter-widgets/jupyterlab-manager's WIDGET_VIEW_MIMETYPE). */
export const WIDGET_VIEW_MIME = "application/vnd.jupyter.widget-view+json";
/** What jupyterlab_widgets' WidgetRenderer.renderModel writes once the manager is restored without the model. */
export const MODEL_NOT_FOUND = "Error displaying widget: model not found";
/** What it writes while it waits for a widget manager (which never comes without a kernel). */
export const LOADING = "Loading widget...";
/** The marker of this package's static renderings (the frame of static_view._frame). */
export const STATIC_MARKER = 'class="gs-static"';
/** How long a renderer may wait for a manager, with no kernel connected, before the saved rendering shows. */
const NO_KERNEL_WAIT_MS = 500;
export const SAVED_NOTE =
  "Saved rendering: the live widget was not saved with the notebook. Run the cell again for the interactive view.";
export const NO_KERNEL_NOTE =
  "Saved rendering: no kernel is connected. Run the cell with a kernel for the interactive view.";

interface MimeModel {
  readonly data: Readonly<Record<string, unknown>>;
  readonly trusted: boolean;
}

/** A Lumino widget, as far as this plugin touches one. */
interface LuminoWidget {
  readonly node: HTMLElement;
  readonly isDisposed: boolean;
  hasClass(name: string): boolean;
  removeClass(name: string): void;
  dispose(): void;
}

/** An IRenderMime.IRenderer; the widget-view one is a Lumino Panel (jupyterlab_widgets' WidgetRenderer). */
interface Renderer extends LuminoWidget {
  renderModel(model: MimeModel): Promise<void>;
  readonly widgets?: readonly LuminoWidget[];
}

interface RenderMimeRegistry {
  createRenderer(mimeType: string): Renderer;
}

interface Signal<S, A> {
  connect(slot: (sender: S, args: A) => void): boolean;
}

/** A NotebookPanel (its notebook's rendermime registry and its session). */
interface NotebookPanel extends LuminoWidget {
  readonly content: { readonly rendermime: RenderMimeRegistry };
  readonly sessionContext: { readonly session: { readonly kernel: unknown } | null };
}

interface WidgetFactory {
  readonly name: string;
  readonly widgetCreated: Signal<WidgetFactory, LuminoWidget>;
}

interface DocumentRegistry {
  widgetFactories(): Iterable<WidgetFactory>;
  getWidgetFactory(name: string): WidgetFactory | undefined;
  readonly changed: Signal<DocumentRegistry, { type: string; name?: string; change: string }>;
}

interface JupyterFrontEnd {
  readonly docRegistry: DocumentRegistry;
}

interface JupyterFrontEndPlugin {
  id: string;
  description: string;
  autoStart: boolean;
  activate(app: JupyterFrontEnd): void;
}

/** Whether an output's `text/html` is one of this package's static renderings. */
export function isStaticRendering(html: unknown): html is string {
  return typeof html === "string" && html.includes(STATIC_MARKER);
}

/** Whether `renderer` shows nothing but `text` (no view, no other content). */
function showsOnly(renderer: Renderer, text: string): boolean {
  return (renderer.widgets?.length ?? 0) === 0 && renderer.node.textContent === text;
}

function isNotebookPanel(widget: LuminoWidget): widget is NotebookPanel {
  const panel = widget as Partial<NotebookPanel>;
  return widget.hasClass("jp-NotebookPanel") && !!panel.content?.rendermime && !!panel.sessionContext;
}

/**
 * Makes `renderer` (a widget-view renderer) show the output's static rendering, rendered by `createHtml()`, when
 * its widget model is gone: after "model not found", or while it waits for a manager with `hasKernel()` false (the
 * manager comes with a kernel: with "No Kernel" chosen, never). Each call of renderModel (the first render and
 * jupyterlab_widgets' rerender after the manager's restore) starts afresh.
 */
function withSavedRendering(renderer: Renderer, createHtml: () => Renderer, hasKernel: () => boolean): void {
  const render = renderer.renderModel.bind(renderer);
  let shown: { note: HTMLElement; html: Renderer } | null = null;
  let generation = 0;

  const clear = (): void => {
    if (!shown) return;
    shown.note.remove();
    shown.html.node.remove(); // never attached as a Lumino child: the WidgetRenderer resets its node's text
    shown.html.dispose();
    shown = null;
  };

  const show = async (model: MimeModel, note: string, mine: number): Promise<void> => {
    const html = createHtml();
    await html.renderModel(model); // reads model.data["text/html"]; sanitised unless model.trusted
    if (mine !== generation || renderer.isDisposed) {
      html.dispose();
      return;
    }
    clear();
    const line = document.createElement("div");
    line.className = "gs-saved-note";
    line.textContent = note;
    renderer.node.textContent = ""; // the renderer's own message
    renderer.removeClass("jupyter-widgets");
    renderer.node.append(line, html.node);
    shown = { note: line, html };
  };

  renderer.renderModel = async (model: MimeModel): Promise<void> => {
    const mine = ++generation;
    clear();
    if (!isStaticRendering(model.data["text/html"])) return render(model);
    const waiting = setTimeout(() => {
      if (mine === generation && showsOnly(renderer, LOADING) && !hasKernel()) void show(model, NO_KERNEL_NOTE, mine);
    }, NO_KERNEL_WAIT_MS);
    try {
      await render(model); // without a kernel, this waits until one starts
    } finally {
      clearTimeout(waiting);
    }
    if (mine !== generation || renderer.isDisposed) return;
    if (showsOnly(renderer, MODEL_NOT_FOUND)) {
      await show(model, SAVED_NOTE, mine);
    } else if (shown && !renderer.node.contains(shown.html.node)) {
      clear(); // a live view replaced the saved rendering (the renderer cleared its node)
    }
  };
}

/** Wraps every widget-view renderer that `panel`'s notebook creates. */
function watchNotebook(panel: NotebookPanel): void {
  const rendermime = panel.content.rendermime;
  const create = rendermime.createRenderer.bind(rendermime);
  rendermime.createRenderer = (mimeType: string): Renderer => {
    const renderer = create(mimeType);
    if (mimeType === WIDGET_VIEW_MIME) {
      withSavedRendering(renderer, () => create("text/html"), () => !!panel.sessionContext.session?.kernel);
    }
    return renderer;
  };
}

const plugin: JupyterFrontEndPlugin = {
  id: "gemscope-widgets:saved-views",
  description: "Shows a saved notebook's static rendering of a view whose widget model is gone.",
  autoStart: true,
  activate(app: JupyterFrontEnd): void {
    const watched = new Set<WidgetFactory>();
    const watch = (factory: WidgetFactory | undefined): void => {
      if (!factory || watched.has(factory)) return;
      watched.add(factory);
      factory.widgetCreated.connect((_, widget) => {
        if (isNotebookPanel(widget)) watchNotebook(widget);
      });
    };
    // Every factory of notebook panels (JupyterLab's "Notebook" and any other), now and when added later.
    for (const factory of app.docRegistry.widgetFactories()) watch(factory);
    app.docRegistry.changed.connect((registry, change) => {
      if (change.type === "widgetFactory" && change.change === "added" && change.name) {
        watch(registry.getWidgetFactory(change.name));
      }
    });
  },
};

export default plugin;
